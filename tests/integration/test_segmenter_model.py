"""The segmenter in MLflow's registry, on a copy of the shared lake: each fit registers a new version of
one pyfunc model and moves `champion` to it; the champion, loaded the way a serving endpoint or a
notebook loads it (`models:/segmenter@champion`, no Spark), gives the users' raw features the segment
and distance the fit wrote, for the raw features and through the autoencoder; a rollback done in the
registry (an alias move) republishes that fit's segments at the next `assign`, and moving the alias
back republishes the newer fit's; the report lands in the fit's MLflow run."""

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient

from segmentation.artifacts import published
from segmentation.cluster import registration
from segmentation.cluster.segmenter import PUBLISHED
from segmentation.cluster.stage import published_run
from segmentation.errors import StageError
from segmentation.pipeline import run_stage
from segmentation.tables import SEGMENT_CENTROIDS, USER_FEATURES, USER_SEGMENTS
from segmentation.train.tracking import connect
from tests.integration.segment_checks import assert_history_follows_the_segments, raw_kmeans_copy


def _agreement(spark, store, champion) -> tuple[float, float]:
    """Share of users whose champion segment is the fit's, and the largest relative distance gap."""
    features = store.read(USER_FEATURES).orderBy("user_id").toPandas()  # 2k users: small
    fit = store.read(USER_SEGMENTS).select("user_id", "segment_id", "distance").orderBy("user_id").toPandas()
    assert list(features.user_id) == list(fit.user_id)
    predicted = champion.predict(features)
    same = float((predicted.segment_id.to_numpy() == fit.segment_id.to_numpy()).mean())
    gap = np.abs(predicted.distance.to_numpy() - fit.distance.to_numpy()) / (1 + fit.distance.to_numpy())
    return same, float(gap.max())


def _segment_rows(store) -> set[tuple]:
    """user_segments as (user, segment, distance, model, how): 2k users, small."""
    columns = ("user_id", "segment_id", "distance", "model_version", "assigned_by")
    return {tuple(r) for r in store.read(USER_SEGMENTS).select(*columns).collect()}


@pytest.mark.slow
def test_each_fit_is_a_registered_champion_that_scores_raw_features_as_the_fit_did(spark, lake, tmp_path):
    cfg, store = raw_kmeans_copy(spark, lake, tmp_path)
    name = registration.model_name(cfg)

    raw = run_stage(spark, cfg, "cluster", "fit-raw")
    raw_rows = _segment_rows(store)
    connect(cfg)
    client = MlflowClient()
    first = client.get_model_version_by_alias(name, registration.CHAMPION)
    assert raw.registered_model == f"{name} version {first.version}"
    assert first.tags[registration.RUN_TAG] == "fit-raw"
    same, gap = _agreement(spark, store, mlflow.pyfunc.load_model(f"models:/{name}@champion"))
    assert same == 1.0 and gap < 1e-5  # the same scaling arithmetic, the same centres

    cfg.clustering.candidates = ["embedding"]
    embedded = run_stage(spark, cfg, "cluster", "fit-embedding")
    second = client.get_model_version_by_alias(name, registration.CHAMPION)
    assert int(second.version) == int(first.version) + 1
    assert embedded.registered_model == f"{name} version {second.version}"
    run = client.get_run(second.run_id)
    assert run.data.tags[registration.RUN_TAG] == "fit-embedding" and "silhouette" in run.data.metrics
    same, gap = _agreement(spark, store, mlflow.pyfunc.load_model(f"models:/{name}@champion"))
    # the autoencoder in float32, in Spark's batches and in one here: a user on a boundary may round apart
    assert same >= 0.999 and gap < 1e-3

    embedded_rows = _segment_rows(store)

    # A rollback in the registry: the next assign republishes fit-raw's segments, then scores with it
    # (no user has events after its snapshot here, so its fit's rows are exactly what the tables hold).
    client.set_registered_model_alias(name, registration.CHAMPION, first.version)
    assert run_stage(spark, cfg, "assign", "after-rollback").model_version == "fit-raw"
    assert published(cfg.paths.current_segmenter) == published_run(store) == "fit-raw"
    assert _segment_rows(store) == raw_rows
    assert {r.run_id for r in store.read(SEGMENT_CENTROIDS).collect()} == {"fit-raw"}
    assert_history_follows_the_segments(store)

    client.set_registered_model_alias(name, registration.CHAMPION, second.version)  # and forward again
    assert run_stage(spark, cfg, "assign", "assign").model_version == "fit-embedding"
    assert _segment_rows(store) == embedded_rows
    assert_history_follows_the_segments(store)
    closed = store.read("user_segment_history").where("NOT is_current AND valid_to < valid_from")
    assert closed.count() == 0  # every stretch ends after it began
    assert run_stage(spark, cfg, "assign", "assign-again").users_written == 0  # nothing left to do

    report = run_stage(spark, cfg, "report", "report")
    attached = [a.path for a in client.list_artifacts(second.run_id, "report")]
    assert attached == [f"report/{report.path.rsplit('/', 1)[-1]}"]

    # A fit that recorded no table versions (fitted by an older version) cannot be republished.
    (cfg.paths.segmenter("fit-raw") / PUBLISHED).unlink()
    client.set_registered_model_alias(name, registration.CHAMPION, first.version)
    with pytest.raises(StageError, match="cluster run fit-raw recorded no table versions"):
        run_stage(spark, cfg, "assign", "no-versions")
    assert published(cfg.paths.current_segmenter) == published_run(store) == "fit-embedding"


@pytest.mark.slow
def test_a_bisecting_fit_walks_its_tree_and_a_fit_the_pyfunc_does_not_cover_is_not_registered(
    spark, lake, tmp_path
):
    cfg, store = raw_kmeans_copy(spark, lake, tmp_path)
    name = registration.model_name(cfg)
    cfg.clustering.algorithms = ["bisecting_kmeans"]
    result = run_stage(spark, cfg, "cluster", "fit-bisecting")
    assert result.registered_model is not None
    assert registration.champion_run(cfg) == "fit-bisecting"
    same, gap = _agreement(spark, store, mlflow.pyfunc.load_model(f"models:/{name}@champion"))
    assert same == 1.0 and gap < 1e-5  # MLlib's tree walk, from the tree it saved

    cfg.clustering.algorithms = ["hdbscan"]
    assert run_stage(spark, cfg, "cluster", "fit-hdbscan").registered_model is None
    assert registration.champion_run(cfg) is None  # the old champion no longer describes the segments
    assert run_stage(spark, cfg, "assign", "assign").model_version == "fit-hdbscan"
