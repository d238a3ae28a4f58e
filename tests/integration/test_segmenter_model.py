"""The segmenter in MLflow's registry, on a copy of the shared lake: each fit registers a new version of
one pyfunc model and moves `champion` to it; the champion, loaded the way a serving endpoint or a
notebook loads it (`models:/segmenter@champion`, no Spark), gives the users' raw features the segment
and distance the fit wrote, for the raw features and through the autoencoder; a rollback done in the
registry stops `assign` with a message naming both runs; the report lands in the fit's MLflow run."""

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient

from segmentation.cluster import registration
from segmentation.errors import StageError
from segmentation.pipeline import run_stage
from segmentation.tables import USER_FEATURES, USER_SEGMENTS
from segmentation.train.tracking import connect
from tests.integration.segment_checks import raw_kmeans_copy


def _agreement(spark, store, champion) -> tuple[float, float]:
    """Share of users whose champion segment is the fit's, and the largest relative distance gap."""
    features = store.read(USER_FEATURES).orderBy("user_id").toPandas()  # 2k users: small
    fit = store.read(USER_SEGMENTS).select("user_id", "segment_id", "distance").orderBy("user_id").toPandas()
    assert list(features.user_id) == list(fit.user_id)
    predicted = champion.predict(features)
    same = float((predicted.segment_id.to_numpy() == fit.segment_id.to_numpy()).mean())
    gap = np.abs(predicted.distance.to_numpy() - fit.distance.to_numpy()) / (1 + fit.distance.to_numpy())
    return same, float(gap.max())


@pytest.mark.slow
def test_each_fit_is_a_registered_champion_that_scores_raw_features_as_the_fit_did(spark, lake, tmp_path):
    cfg, store = raw_kmeans_copy(spark, lake, tmp_path)
    name = registration.model_name(cfg)

    raw = run_stage(spark, cfg, "cluster", "fit-raw")
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

    client.set_registered_model_alias(
        name, registration.CHAMPION, first.version
    )  # a rollback in the registry
    with pytest.raises(
        StageError, match="names cluster run fit-raw, but the segment tables hold run fit-embedding"
    ):
        run_stage(spark, cfg, "assign", "after-rollback")
    client.set_registered_model_alias(name, registration.CHAMPION, second.version)
    assert run_stage(spark, cfg, "assign", "assign").model_version == "fit-embedding"

    report = run_stage(spark, cfg, "report", "report")
    attached = [a.path for a in client.list_artifacts(second.run_id, "report")]
    assert attached == [f"report/{report.path.rsplit('/', 1)[-1]}"]


@pytest.mark.slow
def test_a_fit_the_pyfunc_model_does_not_cover_is_not_registered(spark, lake, tmp_path):
    cfg, _ = raw_kmeans_copy(spark, lake, tmp_path)
    cfg.clustering.algorithms = ["bisecting_kmeans"]
    result = run_stage(spark, cfg, "cluster", "fit-bisecting")
    assert result.registered_model is None
    assert registration.champion_run(cfg) is None  # the old champion no longer describes the segments
    assert run_stage(spark, cfg, "assign", "assign").model_version == "fit-bisecting"
