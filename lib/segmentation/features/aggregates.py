"""Per-user behaviour features from canonical events (pure DataFrame → DataFrame).

Additive figures come from a (user, category) grain of partial sums, summed per user; distinct days
and sessions are counted in two stages, from (user, day) and (user, session) pairs: exact
`countDistinct` over events was measured 3.4× slower (DESIGN.md §6). A single (user, day, session,
category) grain feeding every figure was 1.7-2× slower on generated logs: it is nearly as large as the
events, and each of the four figures it fed shuffled it again with every partial sum.

A family is computed only when its source fields exist (have any value), so a purchases-only export
still gets RFM and temporal features. `feature_specs` is the single definition of every feature: the
computation, the scaling and the feature dictionary (docs/features.md) all come from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.tables import TYPED_EVENTS

TYPE_NAMES = TYPED_EVENTS  # each gets a count and a share
HOUR_BUCKETS = (("night", 0, 6), ("morning", 6, 12), ("afternoon", 12, 18), ("evening", 18, 24))
SECONDS_PER_DAY = 86_400.0
POSITION_TYPES = ("cart", "purchase")  # event types whose place in the user's history is a feature


@dataclass(frozen=True)
class FeatureSpec:
    """One raw feature: its family, its definition for people, how it is scaled, and (as Spark SQL
    over the per-user totals of `_user_totals`) how it is computed."""

    name: str
    family: str
    formula: str
    log1p: bool
    expr: str


@dataclass(frozen=True)
class Vocabulary:
    """What the data offers, found by one small aggregation: which optional fields have values, and
    the globally most frequent categories and devices (their shares become features)."""

    has_event_types: bool
    has_value: bool
    has_quantity: bool
    categories: tuple[str, ...]
    devices: tuple[str, ...]
    has_category: bool
    has_device: bool

    @staticmethod
    def from_dict(values: dict) -> Vocabulary:
        """The vocabulary a snapshot saved with its scaling statistics (JSON lists back to tuples)."""
        return Vocabulary(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def safe_name(value: str) -> str:
    """A category or device value as part of a column name."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "blank"


def vocabulary(events: DataFrame, top_categories: int, top_devices: int) -> Vocabulary:
    """Input: canonical events. Output: their `Vocabulary` (a handful of values on the driver).

    One pass over the events: counts per (category, device) pair, cached (as many rows as distinct
    pairs), answer every question here; a query per question scanned the events three times."""
    pairs = (
        events.groupBy("category", "device")
        .agg(
            F.count("*").alias("n"),
            F.count(F.when(F.col("event_type") != "other", 1)).alias("types"),
            F.count("value").alias("value"),
            F.count("quantity").alias("quantity"),
        )
        .cache()
    )
    try:
        present = pairs.agg(
            F.sum("types").alias("types"),
            F.sum("value").alias("value"),
            F.sum("quantity").alias("quantity"),
            F.sum(F.when(F.col("category").isNotNull(), F.col("n"))).alias("category"),
            F.sum(F.when(F.col("device").isNotNull(), F.col("n"))).alias("device"),
        ).head()

        def top(column: str, n: int) -> tuple[str, ...]:
            if n <= 0 or not present[column]:
                return ()
            rows = (
                pairs.where(F.col(column).isNotNull())
                .groupBy(column)
                .agg(F.sum("n").alias("count"))
                .orderBy(F.desc("count"), column)
                .limit(n)
            )
            chosen: dict[str, str] = {}
            for r in rows.collect():
                chosen.setdefault(safe_name(r[column]), r[column])  # one column per distinct name
            return tuple(chosen.values())

        return Vocabulary(
            has_event_types=bool(present["types"]),
            has_value=bool(present["value"]),
            has_quantity=bool(present["quantity"]),
            categories=top("category", top_categories),
            devices=top("device", top_devices),
            has_category=bool(present["category"]),
            has_device=bool(present["device"]),
        )
    finally:
        pairs.unpersist()


def feature_specs(vocab: Vocabulary | None = None) -> list[FeatureSpec]:
    """Every raw feature for this vocabulary, in column order. Without one: the full list, with
    category and device features shown by their name pattern (for the dictionary)."""
    full = vocab is None
    specs = [
        FeatureSpec("n_events", "activity", "number of events", True, "n"),
        FeatureSpec("active_days", "activity", "distinct days with an event", True, "active_days"),
        FeatureSpec("n_sessions", "activity", "distinct sessions", True, "n_sessions"),
        FeatureSpec("events_per_session", "activity", "n_events / n_sessions", True, "n / n_sessions"),
        FeatureSpec(
            "tenure_days",
            "activity",
            "days from the first to the last event",
            True,
            f"(last_ts - first_ts) / {SECONDS_PER_DAY}",
        ),
        FeatureSpec(
            "recency_days",
            "activity",
            "days from the last event to as_of",
            True,
            f"greatest(0, (as_of_ts - last_ts) / {SECONDS_PER_DAY})",
        ),
        FeatureSpec(
            "mean_gap_hours",
            "activity",
            "mean hours between consecutive events (0 for one event)",
            True,
            "CASE WHEN n > 1 THEN (last_ts - first_ts) / 3600.0 / (n - 1) ELSE 0 END",
        ),
        FeatureSpec(
            "mean_session_gap_days",
            "activity",
            "mean days between session starts (0 for one session)",
            True,
            f"CASE WHEN n_sessions > 1 THEN (last_ts - first_ts) / {SECONDS_PER_DAY} / (n_sessions - 1) ELSE 0 END",
        ),
    ]
    if full or vocab.has_event_types:
        specs += [
            FeatureSpec(f"share_{t}", "event_mix", f"events of type {t} / n_events", False, f"n_{t} / n")
            for t in TYPE_NAMES
        ]
        specs += [
            FeatureSpec(
                "cart_per_view",
                "conversion",
                "cart events / view events (0 without views)",
                False,
                "CASE WHEN n_view > 0 THEN n_cart / n_view ELSE 0 END",
            ),
            FeatureSpec(
                "purchase_per_view",
                "conversion",
                "purchase events / view events (0 without views)",
                False,
                "CASE WHEN n_view > 0 THEN n_purchase / n_view ELSE 0 END",
            ),
            FeatureSpec(
                "purchase_per_cart",
                "conversion",
                "purchase events / cart events (0 without carts)",
                False,
                "CASE WHEN n_cart > 0 THEN n_purchase / n_cart ELSE 0 END",
            ),
            FeatureSpec("purchase_count", "monetary", "number of purchase events", True, "n_purchase"),
        ]
        # Where in a user's active span the buying happens tells "browse for days, then buy" from "buy
        # at once, browse after": segments that do the same things in the same proportions and differ
        # only in order. A mean of timestamps is additive, so no per-user sort of the events is needed.
        specs += [
            FeatureSpec(
                f"{t}_position",
                "timing",
                f"mean position of the user's {t} events in their active span: 0 at the first event, "
                f"1 at the last (0.5 without {t} events or with a single instant)",
                False,
                f"CASE WHEN n_{t} > 0 AND last_ts > first_ts "
                f"THEN (ts_{t} / n_{t} - first_ts) / (last_ts - first_ts) ELSE 0.5 END",
            )
            for t in POSITION_TYPES
        ]
    if full or vocab.has_value:
        specs += [
            FeatureSpec(
                "purchase_total",
                "monetary",
                "sum of value over purchases (all events without types)",
                True,
                "spend",
            ),
            FeatureSpec(
                "purchase_mean",
                "monetary",
                "purchase_total / purchases with a value (0 without)",
                True,
                "CASE WHEN n_spend > 0 THEN spend / n_spend ELSE 0 END",
            ),
        ]
    if full or (vocab.has_value and vocab.has_event_types):
        specs.append(
            FeatureSpec(
                "return_total",
                "monetary",
                "sum of value over returns: the amount returned (share_return: their share of events)",
                True,
                "returned",
            )
        )
    if full or vocab.has_quantity:
        specs.append(FeatureSpec("quantity_total", "monetary", "sum of quantity over purchases", True, "qty"))
    specs += [
        FeatureSpec(
            f"share_{name}",
            "temporal",
            f"events at local hours [{lo}, {hi}) / n_events",
            False,
            f"n_hour_{name} / n",
        )
        for name, lo, hi in HOUR_BUCKETS
    ]
    specs.append(
        FeatureSpec(
            "weekend_share", "temporal", "events on Saturday or Sunday / n_events", False, "n_weekend / n"
        )
    )
    if full:
        specs += [
            FeatureSpec(
                "share_cat_<category>",
                "category_mix",
                "events in one of the top-N categories (features.top_categories) / n_events",
                False,
                "",
            ),
            FeatureSpec(
                "share_cat_other", "category_mix", "events in any other category / n_events", False, ""
            ),
            FeatureSpec(
                "category_entropy",
                "category_mix",
                "Shannon entropy (nats) of the user's category distribution",
                False,
                "",
            ),
            FeatureSpec(
                "share_device_<device>",
                "device_mix",
                "events from one of the top-N devices (features.top_devices) / n_events",
                False,
                "",
            ),
            FeatureSpec(
                "share_device_other", "device_mix", "events from any other device / n_events", False, ""
            ),
        ]
        return specs
    if vocab.has_category:
        specs += [
            FeatureSpec(
                f"share_cat_{safe_name(c)}",
                "category_mix",
                f"events in category {c!r} / n_events",
                False,
                f"`n_cat_{safe_name(c)}` / n",
            )
            for c in vocab.categories
        ]
        specs += [
            FeatureSpec(
                "share_cat_other",
                "category_mix",
                "events in any other category / n_events",
                False,
                "n_cat_other / n",
            ),
            FeatureSpec(
                "category_entropy",
                "category_mix",
                "Shannon entropy (nats) of the user's category distribution",
                False,
                "category_entropy",
            ),
        ]
    if vocab.has_device:
        specs += [
            FeatureSpec(
                f"share_device_{safe_name(d)}",
                "device_mix",
                f"events from device {d!r} / n_events",
                False,
                f"`n_device_{safe_name(d)}` / n",
            )
            for d in vocab.devices
        ]
        specs.append(
            FeatureSpec(
                "share_device_other",
                "device_mix",
                "events from any other device / n_events",
                False,
                "n_device_other / n",
            )
        )
    return specs


def _count_if(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _grain(events: DataFrame, vocab: Vocabulary, timezone: str) -> DataFrame:
    """Events → (user, category) with additive partial sums."""
    local = F.from_utc_timestamp("event_time", timezone)
    hour = F.hour(local)
    weekend = F.dayofweek(local).isin(1, 7)
    typed = F.col("event_type")
    seconds = F.col("event_time").cast("double")
    # Without event types every event is taken as a purchase for the monetary family.
    purchase = (typed == "purchase") if vocab.has_event_types else F.lit(True)
    sums = [
        F.count("*").alias("n"),
        F.min(seconds).alias("first_ts"),
        F.max(seconds).alias("last_ts"),
        *[_count_if(typed == t).alias(f"n_{t}") for t in TYPE_NAMES],
        F.sum(F.when(purchase, F.col("value"))).alias("spend"),
        F.count(F.when(purchase, F.col("value"))).alias("n_spend"),
        F.sum(F.when(purchase, F.col("quantity"))).alias("qty"),
        F.sum(F.when(typed == "return", F.col("value"))).alias("returned"),
        *[F.sum(F.when(typed == t, seconds)).alias(f"ts_{t}") for t in POSITION_TYPES],
        *[_count_if((hour >= lo) & (hour < hi)).alias(f"n_hour_{name}") for name, lo, hi in HOUR_BUCKETS],
        _count_if(weekend).alias("n_weekend"),
        *[_count_if(F.col("device") == d).alias(f"n_device_{safe_name(d)}") for d in vocab.devices],
        _count_if(
            F.col("device").isNull() | ~F.col("device").isin(*vocab.devices) if vocab.devices else F.lit(True)
        ).alias("n_device_other"),
    ]
    return events.groupBy("user_id", "category").agg(*sums)


def _distinct_per_user(events: DataFrame, column: str, name: str) -> DataFrame:
    """user_id, `name`: the number of distinct values of `column` (null counted as one) per user."""
    return (
        events.groupBy("user_id", column)
        .agg(F.lit(1).alias("_"))
        .groupBy("user_id")
        .agg(F.count("*").alias(name))
    )


def _user_totals(events: DataFrame, vocab: Vocabulary, timezone: str) -> DataFrame:
    """Per-user totals: additive sums and category counts from the (user, category) grain, distinct
    days and sessions from the events."""
    # Each of the three aggregations below shuffles its columns of the events by user once; every
    # later per-user step (the grain's sums per user, the joins) then runs without another shuffle.
    # Left to partial aggregation, the grain's partial sums (about 20 columns) were shuffled twice.
    events = events.repartition("user_id")
    grain = _grain(events, vocab, timezone)
    additive = [c for c in grain.columns if c.startswith(("n", "ts_")) or c in ("spend", "qty", "returned")]
    per_user = [
        *[F.sum(c).alias(c) for c in additive],
        F.min("first_ts").alias("first_ts"),
        F.max("last_ts").alias("last_ts"),
    ]
    if vocab.has_category:
        top = list(vocab.categories)
        known = F.col("category").isNotNull()
        per_user += [
            *[
                F.sum(F.when(F.col("category") == c, F.col("n")).otherwise(0)).alias(f"n_cat_{safe_name(c)}")
                for c in top
            ],
            F.sum(F.when(~F.col("category").isin(*top) | ~known, F.col("n")).otherwise(0)).alias(
                "n_cat_other"
            ),
            # Entropy over known categories; uncategorized events do not count as a category.
            F.sum(F.when(known, F.col("n"))).alias("_known"),
            F.sum(F.when(known, F.col("n") * F.log(F.col("n")))).alias("_clogc"),
        ]
    totals = grain.groupBy("user_id").agg(*per_user)
    if vocab.has_category:
        totals = totals.withColumn(
            "category_entropy",
            F.when(F.col("_known") > 0, F.log(F.col("_known")) - F.col("_clogc") / F.col("_known")).otherwise(
                0.0
            ),
        ).drop("_known", "_clogc")
    return totals.join(_distinct_per_user(events, "event_date", "active_days"), "user_id").join(
        _distinct_per_user(events, "session_id", "n_sessions"), "user_id"
    )


def user_features(events: DataFrame, vocab: Vocabulary, as_of: Column, timezone: str = "UTC") -> DataFrame:
    """Canonical events → one row per user with the raw features of `feature_specs(vocab)`.

    Input columns: user_id, event_time, event_date, event_type, value, quantity, session_id,
    category, device. Output: user_id, then each feature (double) in `feature_specs(vocab)` order.
    """
    totals = _user_totals(events, vocab, timezone).withColumn("as_of_ts", as_of.cast("double"))
    return totals.select(
        "user_id",
        *[F.coalesce(F.expr(s.expr).cast("double"), F.lit(0.0)).alias(s.name) for s in feature_specs(vocab)],
    )
