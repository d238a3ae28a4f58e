"""Offline evaluation of the segment lists on a temporal split: lists from the purchases before
`cutoff` (the last purchase less `holdout_days`), scored on what each user bought after it that they
had not bought before. Against the same lists' baseline: global popularity. Both recommend at most
`eval_k` items a user has not bought before the cutoff, from candidate lists of `top_n`.

- hit rate: the share of evaluated users with at least one of their recommendations among their new
  purchases; NDCG: DCG of the hits (1 / log2(position + 1)) over the best DCG their new purchases
  allow. Users with no new purchase after the cutoff are not evaluated.
- The users' segments are the current model's, fitted on features that include the held-out days:
  the lists are built only from purchases before the cutoff, but the segmentation saw the whole
  window (a refit on the earlier days alone would cost a second fit).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from segmentation.recommend.lists import popularity_list, segment_lists

METHODS = ("segment", "popularity")


@dataclass(frozen=True)
class Split:
    cutoff: dt.datetime
    before: DataFrame  # (user_id, key, event_time) before the cutoff
    after: DataFrame  # the same from the cutoff on


def split(purchases: DataFrame, holdout_days: int) -> Split | None:
    """The purchases (user_id, key, event_time) before and after the last one less `holdout_days`;
    None without purchases."""
    last = purchases.agg(F.max("event_time").alias("last")).first()["last"]
    if last is None:
        return None
    cutoff = last - dt.timedelta(days=holdout_days)
    return Split(
        cutoff, purchases.where(F.col("event_time") < cutoff), purchases.where(F.col("event_time") >= cutoff)
    )


def evaluate(
    parts: Split, segments: DataFrame, top_n: int, k: int, rank_by: str, min_buyers: int
) -> list[dict]:
    """Input: a `split` of item purchases and `segments` (user_id, segment_id) of the published
    segments. Output: a row per method and segment, and per method for all users (segment_id None):
    method, segment_id, users, hit_rate, ndcg."""
    seen = parts.before.select("user_id", "key").distinct()
    relevant = (
        parts.after.select("user_id", "key")
        .distinct()
        .join(seen, ["user_id", "key"], "left_anti")
        .join(segments, "user_id")
    )
    evaluated = relevant.select("user_id", "segment_id").distinct()
    candidates = {
        "segment": evaluated.join(
            segment_lists(parts.before, segments, top_n, rank_by, min_buyers).select(
                "segment_id", "rank", "key"
            ),
            "segment_id",
        ),
        "popularity": evaluated.crossJoin(
            popularity_list(parts.before, segments, top_n).select("rank", "key")
        ),
    }
    # ideal DCG for n relevant items, n = 1..k: a literal array indexed by min(n, k)
    ideal = F.array(*[F.lit(sum(1 / math.log2(r + 1) for r in range(1, n + 1))) for n in range(1, k + 1)])
    wanted = relevant.groupBy("user_id").agg(F.count("*").alias("n_relevant"))
    per_user = []
    for method, candidate in candidates.items():
        shown = candidate.join(seen, ["user_id", "key"], "left_anti").withColumn(
            "position", F.row_number().over(Window.partitionBy("user_id").orderBy("rank"))
        )
        gains = (
            shown.where(F.col("position") <= k)
            .join(relevant.select("user_id", "key"), ["user_id", "key"])
            .groupBy("user_id")
            .agg(F.count("*").alias("hits"), F.sum(1 / F.log2(F.col("position") + 1)).alias("dcg"))
        )
        per_user.append(
            evaluated.join(wanted, "user_id")
            .join(gains, "user_id", "left")
            .select(
                F.lit(method).alias("method"),
                "segment_id",
                (F.coalesce(F.col("hits"), F.lit(0)) > 0).cast("double").alias("hit"),
                (
                    F.coalesce(F.col("dcg"), F.lit(0.0)) / ideal[F.least(F.col("n_relevant"), F.lit(k)) - 1]
                ).alias("ndcg"),
            )
        )
    # Every method's figures per segment and overall in one job: rollup's subtotal over segment_id is
    # the overall row (grouping() tells it from a segment; the grand total over methods is dropped).
    figures = (
        functools.reduce(DataFrame.unionByName, per_user)
        .rollup("method", "segment_id")
        .agg(
            F.count("*").alias("users"),
            F.avg("hit").alias("hit_rate"),
            F.avg("ndcg").alias("ndcg"),
            F.grouping("method").alias("all_methods"),
            F.grouping("segment_id").alias("overall"),
        )
        .where(F.col("all_methods") == 0)
        .collect()  # a row per method and segment
    )
    rows = [
        {
            "method": r["method"],
            "segment_id": None if r["overall"] else r["segment_id"],  # None: the overall row
            "users": r["users"],
            "hit_rate": r["hit_rate"],
            "ndcg": r["ndcg"],
        }
        for r in figures
    ]
    # no user to evaluate: no group at all, but each method still reports its (empty) overall row
    reported = {r["method"] for r in rows if r["segment_id"] is None}
    rows += [
        {"method": m, "segment_id": None, "users": 0, "hit_rate": None, "ndcg": None}
        for m in candidates
        if m not in reported
    ]
    return rows
