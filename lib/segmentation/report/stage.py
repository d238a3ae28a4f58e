"""Stage `report`: the segment tables, the run log, drift and quarantine → one HTML page.

Everything it reads onto the driver is an aggregate (a row per stage, per evaluated partition, per
segment, per transition, per assign run, per quarantine reason) or one bounded sample: the map's
`report.map_users` users, taken by a hash of user_id (the same users on every rerun). Segments smaller
than `privacy.min_segment_size` are suppressed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.artifacts import atomic_write_text
from segmentation.cluster import registration
from segmentation.cluster.profiles import OTHER_SEGMENT, feature_columns
from segmentation.cluster.stage import published_run
from segmentation.report.render import ReportData, render
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.storage import TableStore
from segmentation.tables import (
    CLUSTERING_EVALUATION,
    EVENTS_QUARANTINE,
    K_EVIDENCE,
    PIPELINE_RUNS,
    RECOMMENDATION_EVALUATION,
    SEGMENT_DRIFT,
    SEGMENT_PROFILES,
    SEGMENT_RECOMMENDATIONS,
    SEGMENT_TRANSITIONS,
    USER_FEATURES,
    USER_SEGMENTS,
)

log = logging.getLogger(__name__)
DRIFT_RUNS = 50  # the latest assign runs and refits shown


@dataclass
class ReportResult(StageResult):
    path: str = summary_field("")
    segments_suppressed: int = 0
    map_users: int = 0


def _rows(frame: DataFrame) -> list[dict]:
    """A small aggregate's rows as dicts (the callers bound the row count)."""
    return [r.asDict() for r in frame.collect()]


def _optional(store: TableStore, name: str) -> DataFrame | None:
    return store.read(name) if store.exists(name) else None


def drift_by_run(drift: DataFrame, limit: int = DRIFT_RUNS) -> DataFrame:
    """Input: segment_drift rows (assign runs against the model they scored with, refits' new snapshot
    against the previous model). Output: one row per run, the latest `limit`: run_id, model_version,
    measured_at, batch_rows, feature_psi and segment_share_psi (the largest of each kind) with their
    thresholds, and drifted (the run's verdict)."""

    def largest(kind: str, column: str):
        return F.max(F.when(F.col("kind") == kind, F.col(column)))

    return (
        drift.groupBy("run_id", "model_version")
        .agg(
            F.min("measured_at").alias("measured_at"),
            F.max("batch_rows").alias("batch_rows"),
            largest("feature", "psi").alias("feature_psi"),
            largest("feature", "threshold").alias("feature_threshold"),
            largest("segment_share", "psi").alias("segment_share_psi"),
            largest("segment_share", "threshold").alias("segment_share_threshold"),
            F.max(F.when(F.col("kind") == "summary", F.col("drifted").cast("int"))).alias("drifted"),
        )
        .withColumn("drifted", F.col("drifted") == 1)
        .orderBy(F.col("measured_at").desc())
        .limit(limit)
    )


def map_sample(segments: DataFrame, features: DataFrame, model_version: str, users: int) -> DataFrame:
    """Input: user_segments and user_features. Output: at most `users` rows of segment_id plus every
    raw feature column, of the users `model_version` segmented, chosen by a hash of user_id (a
    top-`users` per partition, then one merge: never a sort of every user)."""
    names = feature_columns(features)
    # user_segments written before assign existed has no model_version: its run_id is the model's
    version = "model_version" if "model_version" in segments.columns else "run_id"
    current = segments.where(F.col(version) == model_version).select("user_id", "segment_id")
    return (
        current.join(features.select("user_id", *names), "user_id")
        .orderBy(F.xxhash64("user_id"), "user_id")
        .limit(users)
        .select("segment_id", *[F.col(n).cast("double").alias(n) for n in names])
    )


def gather(ctx: StageContext) -> tuple[ReportData, int]:
    """The page's rows from the lake, and how many segments were suppressed for size."""
    store = ctx.store
    model = published_run(store)  # the cluster run that produced the current segments
    minimum = ctx.cfg.privacy.min_segment_size
    profiles_all = _rows(store.read(SEGMENT_PROFILES))  # k rows
    # The cluster stage already merged small segments; this guards tables written by older versions.
    shown = {p["segment_id"] for p in profiles_all if p["n_users"] >= minimum}
    data = ReportData(run_id=ctx.run_id, minimum=minimum, model_run=model)
    data.profiles = [p for p in profiles_all if p["segment_id"] in shown]
    evaluations = store.read_or_fail(CLUSTERING_EVALUATION, "report").where(F.col("run_id") == model)
    data.evaluations = _rows(evaluations.orderBy("representation", "algorithm", "k"))
    if (evidence := _optional(store, K_EVIDENCE)) is not None:  # a row per representation and k
        data.evidence = _rows(evidence.where(F.col("run_id") == model).orderBy("representation", "k"))
    if (runs := _optional(store, PIPELINE_RUNS)) is not None:
        data.stages = _rows(runs.where(F.col("run_id") == ctx.run_id).orderBy("started_at"))  # per stage
        ingest = runs.where((F.col("stage") == "ingest") & (F.col("status") == "success"))
        latest = ingest.orderBy(F.col("finished_at").desc()).limit(1).collect()
        data.ingest = latest[0].asDict() if latest else None
    if (quarantine := _optional(store, EVENTS_QUARANTINE)) is not None:  # a row per reason
        data.quarantine = _rows(quarantine.groupBy("reason").agg(F.count("*").alias("records")))
    if (moves := _optional(store, SEGMENT_TRANSITIONS)) is not None:  # previous x current segments
        rows = _rows(moves.where(F.col("run_id") == model))
        for row in rows:  # users of a segment too small to publish count under -2 (other), as in the profiles
            if row["to_segment"] is not None and row["to_segment"] not in shown:
                row["to_segment"] = OTHER_SEGMENT
        data.transitions = _merge_transitions(rows)
    if (drift := _optional(store, SEGMENT_DRIFT)) is not None:
        data.drift = _rows(drift_by_run(drift))
    if (lists := _optional(store, SEGMENT_RECOMMENDATIONS)) is not None:  # top_n rows per segment
        data.recommendations = _rows(lists.where(F.col("model_version") == model))
    if (scores := _optional(store, RECOMMENDATION_EVALUATION)) is not None:  # per method and segment
        data.recommendation_scores = _rows(scores.where(F.col("run_id") == ctx.run_id))
    users = ctx.cfg.report.map_users
    if users and shown:
        sample = map_sample(
            store.read(USER_SEGMENTS), store.read_or_fail(USER_FEATURES, "report"), model, users
        )
        rows = [r for r in sample.collect() if r["segment_id"] in shown]  # at most map_users rows
        data.map_segments = [r["segment_id"] for r in rows]
        data.map_features = [list(r)[1:] for r in rows]
    return data, len(profiles_all) - len(data.profiles)


def _merge_transitions(rows: list[dict]) -> list[dict]:
    merged: dict = {}
    for row in rows:
        key = (row["from_segment"], row["to_segment"])
        if key in merged:
            merged[key]["users"] += row["users"]
        else:
            merged[key] = dict(row)
    return list(merged.values())


def run(ctx: StageContext) -> ReportResult:
    data, suppressed = gather(ctx)
    path = ctx.paths.report(ctx.run_id)
    atomic_write_text(path, render(data))
    log.info("report: %s", path.resolve())
    tracked = registration.log_report(ctx.cfg, data.model_run, path)
    if tracked:
        log.info("report: attached to MLflow run %s", tracked)
    return ReportResult(
        rows_in=len(data.evaluations),
        rows_out=1,
        path=str(path.resolve()),
        segments_suppressed=suppressed,
        map_users=len(data.map_features),
    )
