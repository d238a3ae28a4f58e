"""pipeline_runs keeps one row per (run_id, stage), the latest attempt's: a stage's first `running`
row is appended (no scan, no conflict), every later status of it replaces the row."""

import datetime as dt

import pytest

from segmentation.runs import record_stage
from segmentation.stage import StageContext, StageResult
from segmentation.storage import open_store
from segmentation.tables import PIPELINE_RUNS

pytestmark = pytest.mark.spark


def test_each_status_replaces_the_stage_row_and_only_the_first_is_an_append(spark, cfg):
    store = open_store(spark, cfg.storage)
    ctx = StageContext.create(spark, cfg, "r1")
    started = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def rows(run_id="r1"):
        found = store.read(PIPELINE_RUNS).where(f"run_id = '{run_id}'").collect()
        return sorted((r.stage, r.status, r.finished_at is None, r.rows_in) for r in found)

    record_stage(ctx, "ingest", "running", started, StageResult())
    record_stage(ctx, "ingest", "success", started, StageResult(rows_in=7))
    record_stage(ctx, "features", "running", started, StageResult())
    assert rows() == [("features", "running", True, 0), ("ingest", "success", False, 7)]
    assert store.history(PIPELINE_RUNS, 1)[0]["operation"] == "WRITE"  # a new stage row: appended

    record_stage(ctx, "ingest", "running", started, StageResult())  # the stage redone under its run id
    assert store.history(PIPELINE_RUNS, 1)[0]["operation"] == "MERGE"
    assert rows() == [("features", "running", True, 0), ("ingest", "running", True, 0)]
    record_stage(ctx, "ingest", "failed", started, StageResult())
    record_stage(StageContext.create(spark, cfg, "r2"), "ingest", "running", started, StageResult())
    assert rows() == [("features", "running", True, 0), ("ingest", "failed", False, 0)]
    assert rows("r2") == [("ingest", "running", True, 0)]
