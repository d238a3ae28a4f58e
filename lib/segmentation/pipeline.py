"""Runs stages from the registry, each recorded in `pipeline_runs`; `run_pipeline` resumes runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from segmentation.config import Config
from segmentation.errors import ConfigError, SegmentationError, one_line
from segmentation.registry import PIPELINE, stage
from segmentation.runs import record_stage, recorded_stages
from segmentation.stage import FailedStage, StageContext, StageResult

log = logging.getLogger(__name__)


def run_stage(spark: SparkSession, cfg: Config, name: str, run_id: str | None = None) -> StageResult:
    """Run one stage under `run_id` (new if None) and record it, failed or not, in pipeline_runs."""
    return run_in_context(StageContext.create(spark, cfg, run_id), name)


def run_in_context(ctx: StageContext, name: str) -> StageResult:
    return recorded(ctx, name, stage(name).function())


def recorded(ctx: StageContext, name: str, function: Callable[[StageContext], StageResult]) -> StageResult:
    """Run `function(ctx)` recorded in pipeline_runs as `name` under `ctx.run_id`: `running` before any
    work, then `success` with its result or `failed` with the error (re-raised)."""
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    log.info("stage %s: started (run %s)", name, ctx.run_id)
    # Recorded before any work: a run killed outright (no exception, no `failed` row) stays visible
    # as `running` with no finish time.
    record_stage(ctx, name, "running", started, StageResult())
    try:
        result = function(ctx)
    except Exception as exc:
        failure = FailedStage(error=one_line(exc, limit=2000))
        try:
            record_stage(ctx, name, "failed", started, failure)
        except SegmentationError as audit_error:  # the original failure matters more
            log.warning("could not record the failure of %s: %s", name, audit_error)
        raise
    if result.seconds is None:
        result = dataclasses.replace(result, seconds=round(time.perf_counter() - clock, 2))
    record_stage(ctx, name, "success", started, result)
    log.info("stage %s: done in %.1fs (%d in, %d out)", name, result.seconds, result.rows_in, result.rows_out)
    return result


def run_pipeline(
    spark: SparkSession, cfg: Config, resume: str | None = None, run_id: str | None = None
) -> tuple[str, dict[str, StageResult]]:
    """ingest → report under one run id (`run_id`, or a new one); with `resume`, under that run's id,
    skipping the stages it completed."""
    if resume and run_id:
        raise ConfigError("--run-id and --resume name the run twice: give one")
    ctx = StageContext.create(spark, cfg, resume or run_id)
    done: set[str] = set()
    if resume:
        recorded = recorded_stages(ctx.store, resume)
        if not recorded:
            raise ConfigError(f"--resume {resume}: pipeline_runs has no run of that id (nothing to resume)")
        done = {stage for stage, status in recorded.items() if status == "success"}
        if not done:
            log.info("run %s has no completed stages: running every stage", ctx.run_id)
    results: dict[str, StageResult] = {}
    for entry in PIPELINE:
        if entry.name in done:
            log.info("stage %s: already completed in run %s, skipped", entry.name, ctx.run_id)
            continue
        results[entry.name] = run_in_context(ctx, entry.name)
    return ctx.run_id, results
