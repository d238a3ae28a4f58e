"""The deep representations beyond the autoencoder, on copies of the shared generated lake: the idec
refinement (the pipeline's autoencoder refined with the embedding's centres through TorchDistributor)
and the sequence encoder (stage `sequence`: tokens, contrastive training through TorchDistributor,
embeddings in Spark); each is evaluated by the cluster stage, selectable and saved for `assign`."""

import json
import shutil

import pytest
import torch
from pyspark.sql import functions as F

from segmentation.cluster import stage as cluster
from segmentation.sequence import stage as sequence
from segmentation.sequence.tokens import FIELDS
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.train import model as model_io
from tests.conftest import make_config
from tests.integration.segment_checks import assert_rescoring_reproduces_the_fit


def _copy(lake, tmp_path, *settings):
    """A config over a copy of the shared lake (its tables, artifacts and planted truth)."""
    shutil.copytree(lake.root / "lake", tmp_path / "lake")
    shutil.copytree(lake.root / "raw_truth", tmp_path / "raw_truth")
    return make_config(
        tmp_path,
        "generate.users=2000",
        "clustering.k=[3, 4, 5, 6]",
        "clustering.algorithms=[kmeans]",
        "training.batch_size=32",
        *settings,
    )


def _evaluation(store, run_id: str) -> list:
    """One cluster run's clustering_evaluation rows (the copied lake holds its own run's too)."""
    return store.read("clustering_evaluation").where(F.col("run_id") == run_id).collect()


@pytest.mark.slow
def test_cluster_stage_refines_the_embedding_and_can_select_it(spark, lake, tmp_path):
    cfg = _copy(
        lake,
        tmp_path,
        "clustering.candidates=[idec]",  # embedding and raw are still evaluated, for comparison
        "clustering.idec.epochs=10",
    )
    result = cluster.run(StageContext.create(spark, cfg, "idec-run"))
    store = open_store(spark, cfg.storage)

    evidence = {
        (r.representation, r.k): r for r in store.read("k_evidence").where("run_id = 'idec-run'").collect()
    }
    k = next(r.k for (rep, _), r in evidence.items() if rep == "embedding" and r.chosen)
    assert [key for key in evidence if key[0] == "idec"] == [("idec", k)]  # refined at the embedding's k
    assert evidence[("idec", k)].chosen and evidence[("idec", k)].jaccard_min is not None

    rows = {r.representation: r for r in _evaluation(store, "idec-run")}
    assert set(rows) == {"embedding", "raw", "idec"}
    assert rows["idec"].selected and rows["idec"].k == k
    assert "the embedding's k, which the refinement was trained for" in rows["idec"].selection_reason
    # the planted segments survive the refinement (the generator's world is one the embedding already
    # separates well; docs/quality.md measures where refinement helps and where it hurts)
    truth = {e.representation: e.ari_truth for e in result.evaluations}
    assert truth["idec"] >= truth["embedding"] - 0.05, truth
    assert result.selected["representation"] == "idec"

    segments = store.read("user_segments")
    assert segments.count() == store.read("user_features").count()
    assert {r.representation for r in segments.select("representation").distinct().collect()} == {"idec"}
    manifest = json.loads((cfg.paths.segmenter("idec-run") / "segmenter.json").read_text())
    refined = cfg.paths.refined_model("idec-run")
    assert manifest["representation"] == "idec" and manifest["encoder_version"] == "idec-run"
    assert_rescoring_reproduces_the_fit(spark, cfg)  # assign embeds with the refined encoder
    centres = model_io.load_centres(refined)
    assert centres is not None and centres.shape[0] == k
    # the refined encoder is the trained one moved, not a new network
    version = store.read("user_embeddings").select("model_version").head()[0]
    start, _ = model_io.load(cfg.paths.model(version))
    moved, _ = model_io.load(refined)
    before, after = start.state_dict(), moved.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    centroid_dims = store.read("segment_centroids").select(F.size("centroid").alias("d")).distinct().collect()
    assert [r.d for r in centroid_dims] == [centres.shape[1]]


@pytest.mark.slow
def test_sequence_stage_embeds_every_user_and_cluster_can_select_it(spark, lake, tmp_path):
    cfg = _copy(
        lake, tmp_path, "clustering.candidates=[sequence]", "sequence.epochs=3", "sequence.max_events=16"
    )
    store = open_store(spark, cfg.storage)
    before = store.snapshot("user_sequences").version  # the shared lake's run built it
    skipped = sequence.run(StageContext.create(spark, make_config(tmp_path), "off"))
    assert skipped.skipped and store.snapshot("user_sequences").version == before  # not a candidate

    result = sequence.run(StageContext.create(spark, cfg, "seq-run"))
    users = store.read("user_features").count()
    assert result.rows_out == users and result.model_version == "seq-run"
    tokens = store.read("user_sequences")
    assert tokens.count() == users
    widths = tokens.select(F.size("sequence").alias("w")).distinct().collect()
    assert [r.w for r in widths] == [16 * len(FIELDS)]
    bots = store.read("events_silver").where("is_bot").select("user_id").distinct()
    assert tokens.join(bots, "user_id").count() == 0  # the features' users only
    embedded = store.read("user_sequence_embeddings")
    assert embedded.count() == users
    norms = embedded.select(F.aggregate("embedding", F.lit(0.0), lambda a, v: a + v * v).alias("n"))
    assert norms.where(F.abs(F.col("n") - 1) > 1e-3).count() == 0  # unit vectors, as trained

    clustered = cluster.run(StageContext.create(spark, cfg, "seq-cluster"))
    rows = {r.representation: r for r in _evaluation(store, "seq-cluster")}
    assert set(rows) == {"embedding", "raw", "sequence"} and rows["sequence"].selected
    assert clustered.selected["representation"] == "sequence"
    evidence = (
        store.read("k_evidence").where("representation = 'sequence' AND run_id = 'seq-cluster'").collect()
    )
    assert sorted(r.k for r in evidence) == [3, 4, 5, 6] and sum(r.chosen for r in evidence) == 1
    manifest = json.loads((cfg.paths.segmenter("seq-cluster") / "segmenter.json").read_text())
    assert manifest["encoder_version"] == "seq-run"
    assert_rescoring_reproduces_the_fit(spark, cfg)  # assign tokenizes and embeds as the stage did
