"""Stage `report`: segment_profiles, clustering_evaluation, k_evidence and pipeline_runs → one HTML page.

Everything it shows is an aggregate (a row per stage, per evaluated partition, per segment), so the
driver only ever holds small tables. Segments smaller than `privacy.min_segment_size` are suppressed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import functions as F

from segmentation.artifacts import atomic_write_text
from segmentation.cluster.stage import published_run
from segmentation.report.render import render
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import (
    CLUSTERING_EVALUATION,
    K_EVIDENCE,
    PIPELINE_RUNS,
    RECOMMENDATION_EVALUATION,
    SEGMENT_PROFILES,
    SEGMENT_RECOMMENDATIONS,
)

log = logging.getLogger(__name__)


@dataclass
class ReportResult(StageResult):
    path: str = summary_field("")
    segments_suppressed: int = 0


def run(ctx: StageContext) -> ReportResult:
    store = ctx.store
    # The clustering run that produced the current segments (all segment tables agree on it).
    cluster_run = published_run(store)
    profiles_all = [r.asDict() for r in store.read(SEGMENT_PROFILES).collect()]  # k rows
    evaluations = store.read_or_fail(CLUSTERING_EVALUATION, "report").where(F.col("run_id") == cluster_run)
    evaluations = [r.asDict() for r in evaluations.orderBy("representation", "algorithm", "k").collect()]
    evidence = []
    if store.exists(K_EVIDENCE):  # k chosen by a rule of the evidence (not under k_rule metric)
        rows = store.read(K_EVIDENCE).where(F.col("run_id") == cluster_run)
        evidence = [
            r.asDict() for r in rows.orderBy("representation", "k").collect()
        ]  # ks per representation
    minimum = ctx.cfg.privacy.min_segment_size
    # The cluster stage already merged small segments; this guards tables written by older versions.
    profiles = [p for p in profiles_all if p["n_users"] >= minimum]
    stages = []
    if store.exists(PIPELINE_RUNS):
        runs = store.read(PIPELINE_RUNS).where(F.col("run_id") == ctx.run_id).orderBy("started_at")
        stages = [r.asDict() for r in runs.collect()]  # a row per stage
    lists, scores = [], []
    if store.exists(SEGMENT_RECOMMENDATIONS):  # top_n rows per published segment
        lists = [
            r.asDict()
            for r in store.read(SEGMENT_RECOMMENDATIONS)
            .where(F.col("model_version") == cluster_run)
            .collect()
        ]
    if store.exists(RECOMMENDATION_EVALUATION):  # a row per method and segment
        scores = [
            r.asDict()
            for r in store.read(RECOMMENDATION_EVALUATION).where(F.col("run_id") == ctx.run_id).collect()
        ]
    path = ctx.paths.report(ctx.run_id)
    atomic_write_text(
        path, render(ctx.run_id, stages, evaluations, profiles, minimum, evidence, lists, scores)
    )
    log.info("report: %s", path.resolve())
    return ReportResult(
        rows_in=len(evaluations),
        rows_out=1,
        path=str(path.resolve()),
        segments_suppressed=len(profiles_all) - len(profiles),
    )
