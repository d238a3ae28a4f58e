"""Run ids and the `pipeline_runs` audit table: one row per (run_id, stage)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.storage import TableStore
from segmentation.storage.names import PIPELINE_RUNS

PIPELINE_RUNS_SCHEMA = (
    "run_id string, stage string, status string, started_at timestamp, finished_at timestamp, "
    "rows_in long, rows_out long, rows_quarantined long, rows_duplicate long, details string"
)


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class StageResult:
    """What a stage reports for the audit table; `details` holds stage-specific figures (JSON)."""

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    details: dict = field(default_factory=dict)


def record_stage(
    spark: SparkSession,
    store: TableStore,
    run_id: str,
    stage: str,
    status: str,
    started_at: dt.datetime,
    result: StageResult,
) -> None:
    """Write (or replace) this run's row for `stage`."""
    row = (
        run_id,
        stage,
        status,
        started_at,
        dt.datetime.now(dt.UTC),
        result.rows_in,
        result.rows_out,
        result.rows_quarantined,
        result.rows_duplicate,
        json.dumps(result.details, default=str, sort_keys=True),
    )
    # An upsert: one row per (run, stage), the latest attempt's.
    store.merge(
        spark.createDataFrame([row], PIPELINE_RUNS_SCHEMA), PIPELINE_RUNS, ["run_id", "stage"], ["run_id"]
    )


def completed_stages(store: TableStore, run_id: str) -> set[str]:
    """Stages of `run_id` that finished successfully (a small, per-run set)."""
    if not store.exists(PIPELINE_RUNS):
        return set()
    rows = (
        store.read(PIPELINE_RUNS)
        .where((F.col("run_id") == run_id) & (F.col("status") == "success"))
        .select("stage")
        .distinct()
        .collect()
    )
    return {r.stage for r in rows}


def run_rows(store: TableStore, run_id: str) -> DataFrame:
    return store.read(PIPELINE_RUNS).where(F.col("run_id") == run_id)
