"""Per-user behaviour aggregates from canonical events (pure DataFrame → DataFrame).

Distinct counts (active days, sessions) use two-stage aggregation: group by (user, key) first, then
by user. Exact `countDistinct` over events was measured 3.4× slower (DESIGN.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

TYPE_NAMES = ("view", "search", "cart", "purchase", "rate")


@dataclass(frozen=True)
class FeatureSpec:
    """One raw feature: how it is computed (SQL over the per-user aggregates) and scaled."""

    name: str
    family: str
    formula: str
    log1p: bool


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _ratio(num: str, den: str) -> Column:
    return F.when(F.col(den) > 0, F.col(num) / F.col(den)).otherwise(F.lit(0.0))


def feature_specs() -> list[FeatureSpec]:
    """The raw features in column order, with their definitions (the feature dictionary's source)."""
    specs = [
        FeatureSpec("n_events", "activity", "count of events", True),
        FeatureSpec("active_days", "activity", "distinct event dates", True),
        FeatureSpec("n_sessions", "activity", "distinct sessions", True),
        FeatureSpec("events_per_session", "activity", "n_events / n_sessions", True),
        FeatureSpec("recency_days", "activity", "days from the last event to as_of", True),
        FeatureSpec("tenure_days", "activity", "days from the first to the last event", True),
    ]
    specs += [
        FeatureSpec(f"share_{t}", "event_mix", f"events of type {t} / n_events", False) for t in TYPE_NAMES
    ]
    specs += [
        FeatureSpec("purchase_count", "monetary", "count of purchase events", True),
        FeatureSpec("purchase_total", "monetary", "sum of value over purchases", True),
        FeatureSpec("purchase_mean", "monetary", "mean value of a purchase (0 without purchases)", True),
    ]
    return specs


def user_aggregates(events: DataFrame, as_of: Column) -> DataFrame:
    """Canonical events → one row per user with the raw features of `feature_specs()`.

    Input columns: user_id, event_time, event_type, value, session_id, event_date.
    Output columns: user_id, then each feature name in `feature_specs()` order (doubles).
    """
    per_day = events.groupBy("user_id", "event_date").agg(F.count("*").alias("_n"))
    days = per_day.groupBy("user_id").agg(F.count("*").alias("active_days"))
    sessions = (
        events.groupBy("user_id", "session_id")
        .agg(F.count("*").alias("_n"))
        .groupBy("user_id")
        .agg(F.count("*").alias("n_sessions"))
    )
    is_purchase = F.col("event_type") == "purchase"
    main = events.groupBy("user_id").agg(
        F.count("*").alias("n_events"),
        F.min("event_time").alias("_first"),
        F.max("event_time").alias("_last"),
        *[_count(F.col("event_type") == t).alias(f"_n_{t}") for t in TYPE_NAMES],
        F.sum(F.when(is_purchase, F.col("value"))).alias("_purchase_total"),
    )
    joined = main.join(days, "user_id").join(sessions, "user_id")
    seconds_per_day = 86_400.0
    out = joined.select(
        "user_id",
        F.col("n_events").cast("double").alias("n_events"),
        F.col("active_days").cast("double").alias("active_days"),
        F.col("n_sessions").cast("double").alias("n_sessions"),
        (F.col("n_events") / F.col("n_sessions")).alias("events_per_session"),
        F.greatest(F.lit(0.0), (as_of.cast("long") - F.col("_last").cast("long")) / seconds_per_day).alias(
            "recency_days"
        ),
        ((F.col("_last").cast("long") - F.col("_first").cast("long")) / seconds_per_day).alias("tenure_days"),
        *[_ratio(f"_n_{t}", "n_events").alias(f"share_{t}") for t in TYPE_NAMES],
        F.col("_n_purchase").cast("double").alias("purchase_count"),
        F.coalesce(F.col("_purchase_total"), F.lit(0.0)).alias("purchase_total"),
        F.when(
            F.col("_n_purchase") > 0, F.coalesce(F.col("_purchase_total"), F.lit(0.0)) / F.col("_n_purchase")
        )
        .otherwise(F.lit(0.0))
        .alias("purchase_mean"),
    )
    return out
