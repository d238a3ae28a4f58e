"""Checks shared by the assign, identity and deep-representation tests: `assign`'s scoring path,
applied to the fitted snapshot's own users at the snapshot's as_of, must give the fit's segments; and
user_segment_history's open rows must be user_segments."""

from pyspark.sql import functions as F

from segmentation.assign.stage import current_segmenter, score
from segmentation.features.scaling import Scaler
from segmentation.stage import StageContext
from segmentation.tables import EVENTS_SILVER, USER_SEGMENTS


def assert_rescoring_reproduces_the_fit(spark, cfg) -> None:
    ctx = StageContext.create(spark, cfg, "rescore")
    segmenter = current_segmenter(ctx)
    scaler = Scaler.load(ctx.paths.scaling(segmenter.features_run_id))
    silver = ctx.store.read(EVENTS_SILVER)
    rescored = score(ctx, segmenter, scaler, silver, segmenter.as_of, None)
    fitted = ctx.store.read(USER_SEGMENTS).select(
        "user_id", F.col("segment_id").alias("fit_segment"), F.col("distance").alias("fit_distance")
    )
    pairs = rescored.join(fitted, "user_id", "full_outer").cache()
    try:
        counts = pairs.agg(
            F.count("*").alias("users"),
            F.count(F.when(F.col("segment_id").isNull() | F.col("fit_segment").isNull(), 1)).alias(
                "unmatched"
            ),
            F.count(F.when(F.col("segment_id") != F.col("fit_segment"), 1)).alias("moved"),
            F.max(F.abs(F.col("distance") - F.col("fit_distance"))).alias("max_gap"),
        ).head()
    finally:
        pairs.unpersist()
    assert counts["unmatched"] == 0, counts  # the same users: the features stage's rule chose both
    # an encoder may round differently in batches of another size: a user on a boundary may flip
    assert counts["moved"] <= counts["users"] // 1000, counts
    assert counts["max_gap"] < 1e-3, counts


def assert_history_follows_the_segments(store) -> None:
    """user_segment_history's open rows are user_segments' users and segments, one per user."""
    current = store.read(USER_SEGMENTS).select("user_id", "segment_id")
    open_rows = store.read("user_segment_history").where("is_current").select("user_id", "segment_id")
    assert open_rows.count() == current.count()
    assert current.exceptAll(open_rows).count() == 0 and open_rows.exceptAll(current).count() == 0
