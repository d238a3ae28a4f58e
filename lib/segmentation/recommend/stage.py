"""Stage `recommend`: user_segments and events_silver -> segment_recommendations (each published
segment's top items and categories, lists.py) and recommendation_evaluation (those lists against
global popularity on the last `recommend.holdout_days`, evaluate.py).

Only segments the privacy rule publishes (at least `privacy.min_segment_size` users; never noise or
the merged `other`) get lists, and an item needs `recommend.min_buyers` buyers in a segment. A log
without events of `recommend.event_types` gets no lists: the stage records why and succeeds. Everything
runs in Spark; the driver holds the evaluation's few rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation import views
from segmentation.cluster.stage import published_run
from segmentation.recommend import evaluate, lists
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import (
    EVENTS_SILVER,
    RECOMMENDATION_EVALUATION,
    RECOMMENDATION_EVALUATION_SCHEMA,
    SEGMENT_RECOMMENDATIONS,
    SEGMENT_RECOMMENDATIONS_SCHEMA,
    USER_SEGMENTS,
    columns,
)

log = logging.getLogger(__name__)


@dataclass
class RecommendResult(StageResult):
    segments: int = summary_field(0)
    skipped: str | None = summary_field()
    hit_rate: dict | None = summary_field()  # method -> hit rate at eval_k over all evaluated users
    ndcg: dict | None = None
    evaluated_users: int = 0


def published_segments(user_segments: DataFrame, min_size: int) -> DataFrame:
    """(user_id, segment_id) of the segments the privacy rule publishes: non-negative ids (not
    noise or `other`) with at least `min_size` users."""
    segments = user_segments.where(F.col("segment_id") >= 0).select("user_id", "segment_id")
    sizes = segments.groupBy("segment_id").agg(F.count("*").alias("n")).where(F.col("n") >= min_size)
    return segments.join(sizes.select("segment_id"), "segment_id").select("user_id", "segment_id")


def run(ctx: StageContext) -> RecommendResult:
    cfg = ctx.cfg.recommend
    store = ctx.store
    model = published_run(store)
    segments = published_segments(
        store.read_or_fail(USER_SEGMENTS, "recommend"), ctx.cfg.privacy.min_segment_size
    )
    segments = segments.cache()
    try:
        silver = store.read_or_fail(EVENTS_SILVER, "recommend")
        items = lists.bought(silver, cfg.event_types, "item_id")
        parts = evaluate.split(items, cfg.holdout_days)
        if parts is None:
            reason = f"no {'/'.join(cfg.event_types)} events with an item_id in events_silver"
            log.warning("recommend: skipped (%s)", reason)
            return RecommendResult(skipped=reason)
        ctx.describe("recommend: segment lists")
        tagged = [F.lit(model).alias("model_version"), F.lit(ctx.run_id).alias("run_id")]
        frames = [
            lists.segment_lists(
                lists.bought(silver, cfg.event_types, key), segments, cfg.top_n, cfg.rank_by, cfg.min_buyers
            ).select(
                "segment_id", F.lit(kind).alias("kind"), "rank", "key", "buyers", "support", "lift", *tagged
            )
            for kind, key in (("item", "item_id"), ("category", "category"))
        ]
        recommendations = frames[0].unionByName(frames[1]).select(*columns(SEGMENT_RECOMMENDATIONS_SCHEMA))
        store.overwrite(recommendations, SEGMENT_RECOMMENDATIONS)
        ctx.describe("recommend: evaluate on the last days")
        rows = evaluate.evaluate(parts, segments, cfg.top_n, cfg.eval_k, cfg.rank_by, cfg.min_buyers)
        frame = ctx.spark.createDataFrame(
            [{**r, "run_id": ctx.run_id, "k": cfg.eval_k, "cutoff": parts.cutoff} for r in rows],
            RECOMMENDATION_EVALUATION_SCHEMA,
        )
        store.replace_where(frame, RECOMMENDATION_EVALUATION, "run_id", [ctx.run_id])
        views.persist(store, ctx.cfg.privacy.min_segment_size, cfg.event_types)  # catalog lakes only
        overall = {r["method"]: r for r in rows if r["segment_id"] is None}
        written = (
            store.read(SEGMENT_RECOMMENDATIONS)
            .agg(F.count("*").alias("rows"), F.countDistinct("segment_id").alias("segments"))
            .head()
        )
        for method, row in overall.items():
            log.info(
                "recommend: %s lists, %d users with new purchases after %s: hit rate@%d %.3f, NDCG@%d %.3f",
                method,
                row["users"],
                parts.cutoff,
                cfg.eval_k,
                row["hit_rate"] or 0.0,
                cfg.eval_k,
                row["ndcg"] or 0.0,
            )
        return RecommendResult(
            rows_in=segments.count(),
            rows_out=written["rows"],
            segments=written["segments"],
            hit_rate={m: r["hit_rate"] for m, r in overall.items()},
            ndcg={m: r["ndcg"] for m, r in overall.items()},
            evaluated_users=overall.get("segment", {}).get("users", 0),
        )
    finally:
        segments.unpersist()
