"""Per-segment recommendation lists from purchases: pure DataFrame functions.

support(s, x) = the share of segment s's users who bought x; lift(s, x) = support(s, x) / the share of
all segmented users who bought x. `rank_by: support` lists what a segment buys most;
`distinctive`, what it buys most among what it buys more than everyone (lift > 1); `lift`, the most
characteristic first.
Either way an item needs `min_buyers` buyers in the segment, so no list reveals a handful of users.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def bought(silver: DataFrame, event_types: Sequence[str], key: str = "item_id") -> DataFrame:
    """Input: events_silver. Output: (user_id, key, event_time) of the users' non-bot events of
    `event_types` with a `key` (item_id or category); event_time kept for temporal splits. A line with
    a negative quantity is a cancellation (logs that book them as negative purchases), not a purchase."""
    return silver.where(
        F.col("event_type").isin(list(event_types))
        & ~F.col("is_bot")
        & F.col(key).isNotNull()
        & ~F.coalesce(F.col("quantity") < 0, F.lit(False))
    ).select("user_id", F.col(key).cast("string").alias("key"), "event_time")


def segment_lists(
    purchases: DataFrame, segments: DataFrame, top_n: int, rank_by: str, min_buyers: int
) -> DataFrame:
    """Input: `purchases` (user_id, key) and `segments` (user_id, segment_id) of the users to describe.
    Output: segment_id, rank (1 = first), key, buyers, support, lift: at most `top_n` rows a segment."""
    pairs = (
        purchases.select("user_id", "key")
        .distinct()
        .join(segments.select("user_id", "segment_id"), "user_id")
    )
    sizes = segments.groupBy("segment_id").agg(F.count("*").alias("segment_users"))
    everyone = segments.agg(F.count("*").alias("all_users"))
    overall = pairs.groupBy("key").agg(F.count("*").alias("all_buyers"))
    scored = (
        pairs.groupBy("segment_id", "key")
        .agg(F.count("*").alias("buyers"))
        .join(sizes, "segment_id")
        .join(overall, "key")
        .crossJoin(everyone)
        .select(
            "segment_id",
            "key",
            "buyers",
            (F.col("buyers") / F.col("segment_users")).alias("support"),
            (F.col("buyers") / F.col("segment_users") / (F.col("all_buyers") / F.col("all_users"))).alias(
                "lift"
            ),
        )
        .where(F.col("buyers") >= min_buyers)
    )
    if rank_by in ("support", "distinctive"):
        if rank_by == "distinctive":
            scored = scored.where(F.col("lift") > 1.0)
        order = [F.desc("support"), F.desc("lift"), F.asc("key")]
    else:
        order = [F.desc("lift"), F.desc("support"), F.asc("key")]
    ranked = scored.withColumn("rank", F.row_number().over(Window.partitionBy("segment_id").orderBy(*order)))
    return ranked.where(F.col("rank") <= top_n).select(
        "segment_id", "rank", "key", "buyers", "support", "lift"
    )


def popularity_list(purchases: DataFrame, users: DataFrame, top_n: int) -> DataFrame:
    """The baseline: the `top_n` keys bought by most of `users` (user_id), as rank, key, buyers."""
    counts = (
        purchases.select("user_id", "key")
        .distinct()
        .join(users.select("user_id"), "user_id")
        .groupBy("key")
        .agg(F.count("*").alias("buyers"))
    )
    top = counts.orderBy(F.desc("buyers"), F.asc("key")).limit(top_n)
    # rank = 1 + the rows ahead of it: a join of top_n rows with themselves, where a window without a
    # partition would make Spark warn of moving all data to one partition (it is top_n rows)
    a, b = top.alias("a"), top.alias("b")
    ahead = (F.col("b.buyers") > F.col("a.buyers")) | (
        (F.col("b.buyers") == F.col("a.buyers")) & (F.col("b.key") < F.col("a.key"))
    )
    return (
        a.join(b, ahead, "left")
        .groupBy(F.col("a.key").alias("key"), F.col("a.buyers").alias("buyers"))
        .agg((F.count(F.col("b.key")) + 1).cast("int").alias("rank"))
        .select("rank", "key", "buyers")
    )
