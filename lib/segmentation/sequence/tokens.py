"""Each user's recent events as integer tokens (pure `DataFrame -> DataFrame`, Spark only).

A user's row holds its last `max_events` events in time order, each as one code per field in
`FIELDS`, flattened to `max_events * len(FIELDS)` integers; 0 is padding after the last event (a user
with fewer events) and every real code starts at 1, so a model can embed padding as nothing:

- `event_type`: the canonical type (`tables.EVENT_TYPES`, in order);
- `category`: the features' top categories (the vocabulary in the scaling statistics), then one code
  for any other category and one for none;
- `hour`: the hour of day in `features.timezone`;
- `gap`: the time since the user's previous event, in buckets (first event, <1 min, <10 min, <1 h,
  <6 h, <1 day, <1 week, longer): bursts and steady visits differ here;
- `value`: the value's order of magnitude (none, then log10 buckets);
- `position`: where in the user's window the event lies, in eighths: order survives a crop.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from segmentation.tables import EVENT_TYPES

FIELDS = ("event_type", "category", "hour", "gap", "value", "position")
GAP_BOUNDS = (60, 600, 3_600, 6 * 3_600, 86_400, 7 * 86_400)  # seconds
VALUE_BUCKETS = 7  # log10 buckets after "none"
POSITIONS = 8


def cardinalities(categories: tuple[str, ...]) -> tuple[int, ...]:
    """The number of codes of each field of `FIELDS` (padding excluded)."""
    return (len(EVENT_TYPES), len(categories) + 2, 24, len(GAP_BOUNDS) + 2, VALUE_BUCKETS + 1, POSITIONS)


def _code(column: Column, values: tuple[str, ...]) -> Column:
    """1 + the index of `column` in `values`, else len(values) + 1; nulls len(values) + 2."""
    out = F.lit(len(values) + 1)
    for i, v in reversed(list(enumerate(values))):
        out = F.when(column == F.lit(v), F.lit(i + 1)).otherwise(out)
    return F.when(column.isNull(), F.lit(len(values) + 2)).otherwise(out)


def user_sequences(
    events: DataFrame, categories: tuple[str, ...], max_events: int, timezone: str = "UTC"
) -> DataFrame:
    """Input: canonical events (user_id, event_time, event_type, category, value, event_id).
    Output: user_id, sequence (array<int>, `max_events * len(FIELDS)` codes), events (int: how many
    of the user's events the window holds).

    A window keeps each user's latest `max_events` events (ties broken by event_id, so reruns agree);
    only those are grouped, so no user's whole history is held at once."""
    latest = Window.partitionBy("user_id").orderBy(F.col("event_time").desc(), F.col("event_id").desc())
    recent = (
        events.withColumn("_recent", F.row_number().over(latest))
        .where(F.col("_recent") <= max_events)
        .select(
            "user_id",
            F.struct(
                F.col("event_time").cast("double").alias("t"),
                F.col("event_id").alias("id"),
                F.coalesce(_code(F.col("event_type"), EVENT_TYPES), F.lit(len(EVENT_TYPES))).alias("type"),
                _code(F.col("category"), categories).alias("category"),
                (F.hour(F.from_utc_timestamp("event_time", timezone)) + 1).alias("hour"),
                F.when(F.col("value").isNull(), F.lit(1))
                .otherwise(
                    F.least(
                        F.floor(F.log10(F.abs(F.col("value")) + 1)).cast("int") + 2, F.lit(VALUE_BUCKETS + 1)
                    )
                )
                .alias("value"),
            ).alias("e"),
        )
    )
    grouped = recent.groupBy("user_id").agg(F.sort_array(F.collect_list("e")).alias("s"))
    gap_code = (
        "CASE WHEN i = 0 THEN 1 "
        + " ".join(f"WHEN x.t - s[i - 1].t < {bound} THEN {j + 2}" for j, bound in enumerate(GAP_BOUNDS))
        + f" ELSE {len(GAP_BOUNDS) + 2} END"
    )
    tokens = F.expr(
        "flatten(transform(s, (x, i) -> array(x.type, x.category, x.hour, "
        f"{gap_code}, x.value, 1 + int(floor(i * {POSITIONS} / size(s))))))"
    )
    width = max_events * len(FIELDS)
    return grouped.select(
        "user_id",
        F.concat(tokens, F.array_repeat(F.lit(0), F.lit(width) - F.size(tokens))).alias("sequence"),
        F.size("s").alias("events"),
    )
