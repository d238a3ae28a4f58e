"""`segment bench` smoke tests on tiny sizes: it runs and writes every figure and target; the quality lab
measures a world. Developer tools, so `make test-tools` runs these and `make test` (CI) does not."""

import json

import pytest

from segmentation.cli import main
from segmentation.registry import PIPELINE
from tests.conftest import REPO  # noqa: I001

KEYS = {
    "embed_ratio_vs_torch",
    "embed_exchange_seconds",
    "train_ratio_vs_single_process",
    "train_ratio_by_feeder",
    "train_launch_overhead_seconds",
    "features_ratio_vs_pyarrow",
    "features_phase_seconds",
    "train_one_thread_samples_per_s",
    "kmeans_ratio_vs_sklearn",
    "kmeans_inertia_ratio",
    "e2e_seconds",
    "e2e_scaling_4x",
    "ari_selected",
    "ari_raw_baseline",
    "machine",
    "targets",
    "cluster_seconds",
    "cluster_stage_seconds",
    "cluster_ratio_vs_local",
}


pytestmark = [pytest.mark.tools, pytest.mark.slow]


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    overrides = [
        "spark.master=local[2]",
        f"bench.work_dir={tmp_path / 'work'}",
        "bench.e2e_events=[4000, 8000]",
        "bench.repeats=1",
        "bench.embed_rows=3000",
        "bench.train_epochs=2",
        "bench.kmeans_rows=3000",
        "bench.kmeans_k=[3, 4]",
        "training.epochs=2",
        "clustering.k=[3]",
        "clustering.algorithms=[kmeans]",
        # what it measures, not which representation wins: the raw one spares three refinements
        "clustering.candidates=[raw]",
    ]
    args = ["bench", "--conf", str(REPO / "conf" / "local.yaml"), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert KEYS <= set(results), KEYS - set(results)
    assert set(results["e2e_seconds"]) == {"4000", "8000"}
    assert set(results["kmeans_ratio_vs_sklearn"]) == {"3", "4"}
    assert all(v > 0 for v in results["kmeans_inertia_ratio"].values())
    assert results["embed_ratio_vs_torch"] > 0 and results["features_ratio_vs_pyarrow"] > 0
    assert 0 < results["embed_exchange_seconds"]
    assert "arrow" in results["train_ratio_by_feeder"]
    assert 0 <= results["ari_selected"] <= 1
    assert "per-user aggregation and scaling statistics" in results["features_phase_seconds"]
    stages = {s.name for s in PIPELINE}
    assert set(results["cluster_stage_seconds"]) == stages  # the same logs on the standalone cluster
    # sequence skips (not a candidate) and may take no measurable time to compare
    assert stages - {"sequence"} <= set(results["cluster_stage_ratio_vs_local"]) <= stages
    table = out.with_suffix(".md").read_text()
    assert "| `embed_ratio_vs_torch` |" in table and "cores" in table
    assert all(t["met"] in (True, False, None) for t in results["targets"].values())
    for key in [key for key, t in results["targets"].items() if t["met"] is False]:  # each with its cause
        assert f"- `{key}`: " in table
    assert "embed_ratio_vs_torch" in capsys.readouterr().out


def test_quality_lab_smoke(tmp_path, capsys):
    """One small world through the lab: every method's choice, the product's own, the page and the plot;
    a rerun measures nothing again."""
    out = tmp_path / "quality.json"
    args = ["bench", "--conf", str(REPO / "conf" / "local.yaml"), "--quality", "held-out", "--out", str(out)]
    for item in (
        "spark.master=local[2]",
        f"bench.work_dir={tmp_path / 'work'}",
        "bench.quality_worlds=1",
        "bench.quality_users=600",
        "bench.quality_max_k=4",
        "training.epochs=2",
        "sequence.epochs=1",
        "clustering.algorithms=[kmeans]",
    ):
        args += ["--set", item]
    assert main(args) == 0
    (world,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert world["world"]["seed"] == 1000 and world["users_sampled"] == 600
    from segmentation.tools.bench.quality import (
        ALL_FOUR,
        BEST_CANDIDATE,
        IDEC_ALONE,
        PRODUCT,
        SEQUENCE_ALONE,
        methods,
    )

    # what a classifier trained on the truth tells apart: one recall per planted segment in the sample
    assert 0 < len(world["segment_recall"]) <= world["world"]["k"]
    assert world["identifiable_k"] == max(1, sum(r >= 0.5 for r in world["segment_recall"]))

    # clusterboot's figures per segment, so that rules over them replay from the results file
    for figures in (f for rep in ("raw", "embedding") for f in world["evidence"][rep]):
        assert len(figures["jaccard"]) == figures["k"] and min(figures["jaccard"]) == figures["jaccard_min"]

    density = {"hdbscan/raw", "hdbscan/embedding"}
    ends = {PRODUCT, ALL_FOUR, IDEC_ALONE, SEQUENCE_ALONE}  # the cluster stage's own fits
    assert set(world["choices"]) == set(methods()) | ends | density
    assert all(-1 <= c["ari"] <= 1 for c in world["choices"].values())
    assert all(2 <= c["k"] <= 4 for name, c in world["choices"].items() if name not in density)
    # the oracle is the best of the candidates every method chooses from (the product fits its own)
    assert all(
        c["ari"] <= world["oracle_ari"] + 1e-9 for name, c in world["choices"].items() if name not in ends
    )
    assert world["choices"][IDEC_ALONE]["representation"] == "idec"
    assert world["choices"][SEQUENCE_ALONE]["representation"] == "sequence"
    page = out.with_suffix(".md").read_text()
    assert "**1 worlds**, seeds 1000..1000" in page and f"| {PRODUCT} | 1 |" in page
    assert f"| {BEST_CANDIDATE} | 1 |" in page and "k exact against the identifiable k" in page
    assert out.with_suffix(".png").stat().st_size > 0
    assert main(args) == 0  # measured worlds are skipped
    assert len(out.read_text().splitlines()) == 1
    assert "quality.png" in capsys.readouterr().out
