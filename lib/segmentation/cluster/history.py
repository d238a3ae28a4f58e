"""user_segment_history: every user's segment over time as a type-2 slowly changing dimension, so SQL
answers "which segment was user X in on date D".

One row per (user, stretch in one segment): segment_id, model_version (the model that put the user
there), valid_from (that row's `assigned_at` in user_segments), valid_to (null while current) and
is_current. `sync` brings it up to date with user_segments after every fit and assign: a user whose
segment changed gets its open row closed at the new row's `assigned_at` and a new row opened; a user a
fit left out gets its open row closed at that fit's time; everyone else is untouched (a refit that
keeps a user's stable id is no change). Both go into one MERGE keyed by (user_id, valid_from). The sync
compares the two tables whole, so one that did not run (a crash between the two commits) is caught up
by the next; with nothing to change it commits nothing.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stage import StageContext
from segmentation.tables import USER_SEGMENT_HISTORY, USER_SEGMENTS

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "segment_id", "model_version", "valid_from", "valid_to", "is_current")


def changes(current: DataFrame, open_rows: DataFrame) -> DataFrame:
    """Input: user_segments (user_id, segment_id, model_version, assigned_at) and the history's open
    rows. Output: history rows to MERGE on (user_id, valid_from): open rows closed (valid_to set,
    is_current false) and new rows opened."""
    now = current.agg(F.max("assigned_at")).head()[0]
    cur = current.select(
        "user_id",
        F.col("segment_id").alias("_segment"),
        F.col("model_version").alias("_model"),
        F.col("assigned_at").alias("_at"),
    )
    joined = open_rows.join(cur, "user_id", "full_outer")
    moved = (
        F.col("segment_id").isNotNull()
        & F.col("_segment").isNotNull()
        & (F.col("segment_id") != F.col("_segment"))
    )
    left_out = F.col("segment_id").isNotNull() & F.col("_segment").isNull()
    arrived = F.col("segment_id").isNull() & F.col("_segment").isNotNull()
    closed = joined.where(moved | left_out).select(
        "user_id",
        "segment_id",
        "model_version",
        "valid_from",
        F.when(left_out, F.lit(now)).otherwise(F.col("_at")).cast("timestamp").alias("valid_to"),
        F.lit(False).alias("is_current"),
    )
    opened = joined.where(moved | arrived).select(
        "user_id",
        F.col("_segment").alias("segment_id"),
        F.col("_model").alias("model_version"),
        F.col("_at").alias("valid_from"),
        F.lit(None).cast("timestamp").alias("valid_to"),
        F.lit(True).alias("is_current"),
    )
    return closed.unionByName(opened)


def sync(ctx: StageContext) -> int:
    """Bring user_segment_history up to date with user_segments; returns the rows written."""
    store = ctx.store
    current = store.read(USER_SEGMENTS).select("user_id", "segment_id", "model_version", "assigned_at")
    if not store.exists(USER_SEGMENT_HISTORY):
        first = current.select(
            "user_id",
            "segment_id",
            "model_version",
            F.col("assigned_at").alias("valid_from"),
            F.lit(None).cast("timestamp").alias("valid_to"),
            F.lit(True).alias("is_current"),
        )
        store.overwrite(first, USER_SEGMENT_HISTORY)
        written = store.read(USER_SEGMENT_HISTORY).count()
        log.info("history: %d users' segments opened in %s", written, USER_SEGMENT_HISTORY)
        return written
    open_rows = store.read(USER_SEGMENT_HISTORY).where(F.col("is_current")).select(*COLUMNS)
    staged = changes(current, open_rows).cache()
    try:
        written = staged.count()
        if written:
            store.merge(staged, USER_SEGMENT_HISTORY, ["user_id", "valid_from"])
    finally:
        staged.unpersist()
    log.info("history: %d rows of %s closed or opened", written, USER_SEGMENT_HISTORY)
    return written
