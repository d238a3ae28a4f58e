"""Stages in data-flow order, each run recorded in `pipeline_runs`; `run_pipeline` resumes runs."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from segmentation import cluster, embed, features, ingest, maintain, report, train
from segmentation.config import Config
from segmentation.errors import SegmentationError, StageError
from segmentation.runs import StageResult, completed_stages, new_run_id, record_stage
from segmentation.storage import open_store

log = logging.getLogger(__name__)

StageFn = Callable[[SparkSession, Config, str], StageResult]

PIPELINE: dict[str, StageFn] = {
    "ingest": ingest.run,
    "features": features.run,
    "train": train.run,
    "embed": embed.run,
    "cluster": cluster.run,
    "report": report.run,
}
# Every stage `run_stage` runs: the pipeline's, and upkeep that `segment run` leaves to its own schedule.
STAGES: dict[str, StageFn] = {**PIPELINE, "maintain": maintain.run}


def run_stage(spark: SparkSession, cfg: Config, stage: str, run_id: str | None = None) -> StageResult:
    """Run one stage under `run_id` (new if None) and record it, failed or not, in pipeline_runs."""
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    run_id = run_id or new_run_id()
    store = open_store(spark, cfg.storage)
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    log.info("stage %s: started (run %s)", stage, run_id)
    try:
        result = STAGES[stage](spark, cfg, run_id)
    except Exception as exc:
        failure = StageResult(details={"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]})
        try:
            record_stage(spark, store, run_id, stage, "failed", started, failure)
        except SegmentationError as audit_error:  # the original failure matters more
            log.warning("could not record the failure of %s: %s", stage, audit_error)
        raise
    result.details.setdefault("seconds", round(time.perf_counter() - clock, 2))
    record_stage(spark, store, run_id, stage, "success", started, result)
    log.info(
        "stage %s: done in %.1fs (%d in, %d out)",
        stage,
        time.perf_counter() - clock,
        result.rows_in,
        result.rows_out,
    )
    return result


def run_pipeline(
    spark: SparkSession, cfg: Config, resume: str | None = None
) -> tuple[str, dict[str, StageResult]]:
    """ingest → report under one run id; with `resume`, stages that completed in that run are skipped."""
    run_id = resume or new_run_id()
    store = open_store(spark, cfg.storage)
    done = completed_stages(store, run_id) if resume else set()
    if resume and not done:
        log.info("run %s has no completed stages: running every stage", run_id)
    results: dict[str, StageResult] = {}
    for stage in PIPELINE:
        if stage in done:
            log.info("stage %s: already completed in run %s, skipped", stage, run_id)
            continue
        results[stage] = run_stage(spark, cfg, stage, run_id)
    return run_id, results
