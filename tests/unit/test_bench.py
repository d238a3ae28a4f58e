"""The benchmark's standalone-cluster figures (`segment bench` with bench.cluster), from what the
cluster run printed and timed: `make bench` runs that section; `make test` runs the README's cluster
command in test_cluster and these functions here."""

import pytest

from segmentation.tools.bench import cluster_figures, submitted_run_id

# What spark-submit prints for jobs/run.py: Spark's and the product's log lines (stderr merged into
# stdout), then the summary lines.
SUBMITTED = """\
16:05:46 INFO segmentation.spark: Spark 4.0.1 session ready (master spark://127.0.0.1:7077)
16:13:11 INFO segmentation.pipeline: stage report: done in 12.1s (running run 20261202T1600Z-old)
run 20261202T160546Z-607bb1: 1980 users in 5 segments
report: /tmp/reports/index.html
"""


def test_the_run_id_comes_from_the_summary_line_not_a_log_line():
    assert submitted_run_id(SUBMITTED) == "20261202T160546Z-607bb1"


def test_a_run_without_its_summary_line_is_an_error_that_says_so():
    with pytest.raises(RuntimeError, match="no `run RUN_ID:` summary line"):
        submitted_run_id(SUBMITTED.replace("run 2026", "ran 2026"))


def test_cluster_figures_divide_by_the_local_run_of_the_same_size():
    local = {
        "e2e_seconds": {"4000": 100.0, "8000": 150.0},
        "e2e_stage_seconds": {
            "4000": {"ingest": 10.0, "train": 20.0, "sequence": 0.0},
            "8000": {"ingest": 99.0, "train": 99.0, "sequence": 99.0},
        },
    }
    stages = {"ingest": 15.0, "train": 50.0, "sequence": 0.0, "report": 3.0}
    figures = cluster_figures("4000", 180.0, stages, local)
    assert figures == {
        "cluster_events": 4000,
        "cluster_seconds": 180.0,
        "cluster_stage_seconds": stages,
        # a stage the local run did not time, or timed at 0 s, has no ratio
        "cluster_stage_ratio_vs_local": {"ingest": 1.5, "train": 2.5},
        "cluster_ratio_vs_local": 1.8,
    }
