"""The `pipeline_runs` audit table: one row per (run_id, stage), the latest attempt's."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time

from pyspark.sql import functions as F

from segmentation.errors import ConcurrentWriteError
from segmentation.stage import StageContext, StageResult
from segmentation.storage import TableStore
from segmentation.tables import PIPELINE_RUNS, PIPELINE_RUNS_SCHEMA

log = logging.getLogger(__name__)

AUDIT_ATTEMPTS = 6


def record_stage(
    ctx: StageContext, stage: str, status: str, started_at: dt.datetime, result: StageResult
) -> None:
    """Write (or replace) this run's row for `stage`: `running` (no finish time yet), `success` or
    `failed`."""
    row = (
        ctx.run_id,
        stage,
        status,
        started_at,
        None if status == "running" else dt.datetime.now(dt.UTC),
        result.rows_in,
        result.rows_out,
        result.rows_quarantined,
        result.rows_duplicate,
        json.dumps(result.details, default=str, sort_keys=True),
    )
    frame = ctx.spark.createDataFrame([row], PIPELINE_RUNS_SCHEMA)
    # Runs of other stages or other lakes' jobs write this table at the same time (the first two
    # even race to create it). The row is an upsert by key, so writing it again on the newer
    # snapshot is safe: retried, with a little jitter so racing writers spread out.
    for attempt in range(1, AUDIT_ATTEMPTS + 1):
        try:
            if status == "running" and stage not in recorded_stages(ctx.store, ctx.run_id):
                # A stage's first row: an append reads no file and conflicts with no other writer
                # (only with one creating the table: retried below), where a MERGE scans and rewrites
                # the run's partition.
                ctx.store.append(frame, PIPELINE_RUNS, ["run_id"])
            else:
                ctx.store.merge(frame, PIPELINE_RUNS, ["run_id", "stage"], ["run_id"])
            return
        except ConcurrentWriteError as exc:
            if attempt == AUDIT_ATTEMPTS:
                raise
            log.info("pipeline_runs: %s; writing the row again (attempt %d)", exc, attempt + 1)
            time.sleep(random.uniform(0.2, 1.0) * attempt)


def recorded_stages(store: TableStore, run_id: str) -> dict[str, str]:
    """Each stage `run_id` recorded, with its status (a small, per-run map; empty for an unknown run)."""
    if not store.exists(PIPELINE_RUNS):
        return {}
    rows = store.read(PIPELINE_RUNS).where(F.col("run_id") == run_id).select("stage", "status").collect()
    return {r.stage: r.status for r in rows}
