"""Pure cleaning steps: parsed raw records → canonical, validated, deduplicated events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, DecimalType, IntegralType, NumericType, StringType, StructType

from segmentation.config import IngestConfig, InputConfig
from segmentation.errors import ConfigError, one_line
from segmentation.tables import CANONICAL_FIELDS

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("user_id", "event_time")


@dataclass(frozen=True)
class Rule:
    """A data-quality expectation, as in Delta Live Tables: `expect` (Spark SQL over the canonical
    columns) is true for a good record; a record for which it is false breaks the rule. A null result
    passes, as in SQL CHECK constraints. `name` becomes the quarantine reason code."""

    name: str
    expect: str
    action: str = "quarantine"  # quarantine | warn | fail

    def broken(self) -> Column:
        return ~F.coalesce(F.expr(self.expect), F.lit(True))


def builtin_rules(input_cfg: InputConfig, ingest_cfg: IngestConfig) -> list[Rule]:
    """The built-in rules then the configured ones, in priority order: a record is quarantined for the
    first quarantine rule it breaks. `ingest.rule_actions` may change a built-in rule's action."""
    tolerance = ingest_cfg.future_tolerance_minutes
    rules = [
        Rule("missing_user_id", "user_id IS NOT NULL AND trim(user_id) <> ''"),
        Rule("invalid_user_id", "_user_id_scalar"),
        Rule("invalid_timestamp", "event_time IS NOT NULL"),
        Rule("future_timestamp", f"event_time <= current_timestamp() + INTERVAL {tolerance} MINUTES"),
        Rule("missing_event_type", "event_type IS NOT NULL OR event_type_raw IS NOT NULL"),
    ]
    if input_cfg.unknown_event_type == "quarantine":
        rules.append(Rule("unknown_event_type", "event_type IS NOT NULL OR event_type_raw IS NULL"))
    rules.append(Rule("invalid_value", "_value_numeric AND _quantity_numeric"))
    rules.append(Rule("negative_value", "coalesce(value, 0) >= 0 AND coalesce(quantity, 0) >= 0"))
    for name in ingest_cfg.rule_actions:
        if name not in {r.name for r in rules}:
            raise ConfigError(
                f"ingest.rule_actions.{name}: no built-in rule of that name ({', '.join(r.name for r in rules)})"
            )
    rules = [Rule(r.name, r.expect, ingest_cfg.rule_actions.get(r.name, r.action)) for r in rules]
    return rules + [Rule(r.name, r.expect, r.action) for r in ingest_cfg.rules]


def _resolve(schema: StructType, path: str) -> DataType | None:
    """The type at a dotted path inside `schema`, or None when the path does not exist."""
    node: DataType = schema
    for part in path.split("."):
        if not isinstance(node, StructType) or part not in node.fieldNames():
            return None
        node = node[part].dataType
    return node


def with_expressions(parsed: DataFrame, cfg: InputConfig) -> DataFrame:
    """Add `_expr_<field>` for each `input.expressions` entry: Spark SQL evaluated with the record's
    fields in scope by name (nested ones as `a.b`). A bad expression or an unknown column is a
    ConfigError naming the key, raised here, before any data is read."""
    if not cfg.expressions:
        return parsed
    fields = parsed.schema["rec"].dataType.fieldNames()
    flat = parsed.select(
        F.struct(*[F.col(f"`{c}`") for c in parsed.columns]).alias(_OUTER),
        *[F.col(f"rec.`{f}`").alias(f) for f in fields],
    )
    columns = []
    for name, text in cfg.expressions.items():
        column = F.expr(text).alias(f"_expr_{name}")
        try:
            _ = flat.select(column).schema  # analysed now: unknown columns and bad syntax fail here
        except Exception as exc:  # Spark's parse and analysis errors
            raise ConfigError(f"input.expressions.{name}: {one_line(exc)}") from None
        columns.append(column)
    return flat.select(f"{_OUTER}.*", *columns)


_OUTER = "_segment_outer"
EPOCH_UNITS = {"epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}


def detect_time_format(parsed: DataFrame, cfg: InputConfig) -> str | None:
    """`input.time_format`, or for a text event_time without one, `epoch_s`/`epoch_ms`/`epoch_us` when
    every value of a bounded sample (the first 1,000 non-null values; a driver-side sample) is digits
    of an epoch's length (10 for seconds, 13 for milliseconds, 16 for microseconds since 2001)."""
    if cfg.time_format:
        return cfg.time_format
    expressed = with_expressions(parsed, cfg)
    column, tp = source_columns(expressed, cfg)["event_time"]
    if not isinstance(tp, StringType):
        return None
    sample = [
        r[0]
        for r in expressed.select(F.trim(column).alias("t"))
        .where(F.col("t").isNotNull() & (F.col("t") != ""))
        .limit(1000)
        .collect()
    ]
    if not sample or not all(v.isdigit() for v in sample):
        return None
    units = {len(v) for v in sample}
    for name, lengths in (("epoch_s", {9, 10}), ("epoch_ms", {12, 13}), ("epoch_us", {15, 16})):
        if units <= lengths:
            log.info(
                "ingest: event_time is text of digits (e.g. %r): read as %s (set input.time_format to "
                "choose)",
                sample[0],
                name,
            )
            return name
    return None


def describe_source(parsed: DataFrame, cfg: InputConfig, name: str) -> str:
    """Where a canonical field comes from, for messages: `column timestamp:float`, an expression, a constant."""
    if name in cfg.constants:
        return f"constant {cfg.constants[name]!r}"
    if name in cfg.expressions:
        return f"expression {cfg.expressions[name]!r}"
    path = cfg.mapping.get(name, name)
    tp = _resolve(parsed.schema["rec"].dataType, path)
    return f"column {path}:{tp.simpleString()}" if tp is not None else f"column {path} (absent)"


def source_columns(parsed: DataFrame, cfg: InputConfig) -> dict[str, tuple[Column, DataType | None]]:
    """For each canonical field, the column that feeds it (mapping, expression, constant, or the
    same-named column). Expressions: `parsed` has been through `with_expressions`."""
    rec_schema = parsed.schema["rec"].dataType
    out: dict[str, tuple[Column, DataType | None]] = {}
    for name in CANONICAL_FIELDS:
        if name in cfg.expressions:
            out[name] = (F.col(f"_expr_{name}"), parsed.schema[f"_expr_{name}"].dataType)
        elif name in cfg.mapping:
            path = cfg.mapping[name]
            tp = _resolve(rec_schema, path)
            if tp is None:
                raise ConfigError(f"input.mapping.{name} names {path!r}, which the input does not have")
            out[name] = (F.col("rec." + ".".join(f"`{p}`" for p in path.split("."))), tp)
        elif name in cfg.constants:
            out[name] = (F.lit(cfg.constants[name]), None)
        elif name in rec_schema.fieldNames():
            out[name] = (F.col(f"rec.`{name}`"), rec_schema[name].dataType)
    for name in REQUIRED_FIELDS:
        if name not in out:
            raise ConfigError(
                f"the input has no column {name!r}: set input.mapping.{name} to the source column"
            )
    return out


def _event_time(col: Column, tp: DataType | None, time_format: str | None) -> Column:
    if time_format in EPOCH_UNITS:
        number = (
            col.cast("double")
            if isinstance(tp, NumericType)
            else F.trim(col.cast("string")).try_cast("double")
        )
        seconds = number / EPOCH_UNITS[time_format]
        # Out of Spark's timestamp range (year 1 to 9999) is not a time: null, then invalid_timestamp.
        return F.when(F.abs(seconds) < 2.5e11, F.timestamp_micros((seconds * 1_000_000).cast("long")))
    if isinstance(tp, NumericType):
        # Epoch numbers: values above 1e11 can only be milliseconds (1e11 s is the year 5138).
        seconds = F.when(F.abs(col) > 1e11, col / 1000).otherwise(col)
        return F.timestamp_seconds(seconds.cast("double"))
    text = F.trim(col.cast("string"))
    return F.try_to_timestamp(text, F.lit(time_format)) if time_format else F.try_to_timestamp(text)


def _scalar_id(col: Column, tp: DataType | None) -> Column:
    """False for an id that is not one: a boolean, a number with a fraction, an array or an object
    (also when a mixed-type JSON column brings them as text, `["x"]`, `true`); true for null."""
    if tp is not None and not isinstance(tp, StringType | IntegralType | DecimalType):
        return col.isNull()
    if isinstance(tp, DecimalType) and tp.scale > 0:
        return col.isNull() | (col == F.floor(col))
    text = F.lower(F.trim(col.cast("string")))
    structured = text.startswith("[") | text.startswith("{") | text.isin("true", "false", "null")
    return F.coalesce(~structured, F.lit(True))


def _numeric(col: Column, tp: DataType | None, typed: Column) -> Column:
    """False where the source has a value that is not a finite number (`"abc"`, `true`, NaN)."""
    if tp is not None and not isinstance(tp, NumericType | StringType):
        return col.isNull()
    finite = typed.isNotNull() & ~F.isnan(typed.cast("double")) & (F.abs(typed.cast("double")) < float("inf"))
    return col.isNull() | F.coalesce(finite, F.lit(False))


def _normalized(col: Column) -> Column:
    text = F.lower(F.trim(col.cast("string")))
    return F.when(text == "", None).otherwise(text)


def canonicalize(parsed: DataFrame, cfg: InputConfig, keep: Sequence[str] = ()) -> DataFrame:
    """Parsed raw records → canonical columns (untrusted yet).

    Input: raw_record, source_file, rec, parse_error (see readers). Output: raw_record, source_file,
    parse_error, the canonical fields (user_id, event_time UTC, event_type or null when
    unmapped, item_id, category, value, quantity, session_id, device), event_type_raw, and the
    checks the built-in rules read: _user_id_scalar, _value_numeric, _quantity_numeric; plus the
    input columns named in `keep`.
    """
    parsed = with_expressions(parsed, cfg)
    sources = source_columns(parsed, cfg)

    def src(name: str) -> Column:
        return sources[name][0] if name in sources else F.lit(None)

    type_map = {raw.strip().lower(): canonical for canonical, raws in cfg.event_types.items() for raw in raws}
    type_lookup = (
        F.create_map(*[F.lit(x) for x in chain.from_iterable(type_map.items())]) if type_map else None
    )
    raw_type = _normalized(src("event_type")) if "event_type" in sources else F.lit(None).cast("string")
    mapped_type = type_lookup[raw_type] if type_lookup is not None else F.lit(None).cast("string")
    if cfg.unknown_event_type == "other":
        mapped_type = F.when(raw_type.isNotNull(), F.coalesce(mapped_type, F.lit("other")))
    if "event_type" not in sources:
        mapped_type = F.lit("other")

    user = F.trim(src("user_id").cast("string"))
    # A return's amount and quantity are kept positive (logs often record them negative, as the
    # cancellation lines of an invoice); negative values of other types stay quarantined.
    returned = F.coalesce(mapped_type == "return", F.lit(False))
    value = src("value").try_cast("double")
    value = F.when(returned, F.abs(value)).otherwise(value)
    quantity = src("quantity").try_cast("double").try_cast("long")
    quantity = F.when(returned, F.abs(quantity)).otherwise(quantity)

    def typed(name: str) -> DataType | None:
        return sources[name][1] if name in sources else None

    return parsed.select(
        "raw_record",
        "source_file",
        "parse_error",
        *keep,
        F.when(user != "", user).alias("user_id"),
        _event_time(src("event_time"), sources["event_time"][1], cfg.time_format).alias("event_time"),
        raw_type.alias("event_type_raw"),
        mapped_type.alias("event_type"),
        src("item_id").cast("string").alias("item_id"),
        _normalized(src("category")).alias("category"),
        value.alias("value"),
        quantity.alias("quantity"),
        src("session_id").cast("string").alias("session_id"),
        _normalized(src("device")).alias("device"),
        _scalar_id(src("user_id"), typed("user_id")).alias("_user_id_scalar"),
        _numeric(src("value"), typed("value"), value).alias("_value_numeric"),
        _numeric(src("quantity"), typed("quantity"), src("quantity").try_cast("double")).alias(
            "_quantity_numeric"
        ),
    )


def classify(events: DataFrame, rules: list[Rule]) -> DataFrame:
    """Add `reject_reason`: the parse error, else the first quarantine rule the row breaks, else null.
    Add `_broken_<rule>` flags for warn and fail rules, so one pass can count them."""
    reason: Column = F.lit(None).cast("string")
    for rule in reversed([r for r in rules if r.action == "quarantine"]):
        reason = F.when(rule.broken(), F.lit(rule.name)).otherwise(reason)
    flagged = events.withColumn("reject_reason", F.coalesce(F.col("parse_error"), reason))
    for rule in rules:
        if rule.action != "quarantine":
            flagged = flagged.withColumn(
                f"_broken_{rule.name}", F.col("parse_error").isNull() & rule.broken()
            )
    return flagged


def count_broken(checked: DataFrame, rules: list[Rule]) -> dict[str, int]:
    """Records breaking each warn or fail rule (one aggregation; empty when there are none)."""
    watched = [r for r in rules if r.action != "quarantine"]
    if not watched:
        return {}
    row = checked.agg(*[F.sum(F.col(f"_broken_{r.name}").cast("long")).alias(r.name) for r in watched]).head()
    return {r.name: int(row[r.name] or 0) for r in watched}


def with_event_id(events: DataFrame, key: bytes | None = None) -> DataFrame:
    """`event_id`: a deterministic hash of the source record, so exact duplicates share it; keyed
    (HMAC) under pseudonymization, so the id cannot be checked against a guessed raw record."""
    from segmentation.privacy import pseudonymize

    raw = F.col("raw_record")
    digest = F.sha2(raw, 256) if key is None else pseudonymize(raw, key)
    return events.withColumn("event_id", F.substring(digest, 1, 32))


def redacted_record(
    parsed: DataFrame, cfg: InputConfig, withheld: Sequence[str], key: bytes | None
) -> Column:
    """What bronze and quarantine may keep of a record under privacy settings: the parsed record as
    JSON with its user id pseudonymized (with `key`) and the `withheld` canonical fields' sources
    removed; null for a record that could not be parsed (nothing in it can be told apart from an id).

    Input: the readers' columns (rec). Output: one string column."""
    from segmentation.privacy import pseudonymize

    schema = parsed.schema["rec"].dataType
    rec = F.col("rec")
    user = cfg.mapping.get("user_id", "user_id")
    if key is not None and _resolve(schema, user) is not None:
        rec = rec.withField(user, pseudonymize(F.col("rec." + user).cast("string"), key))
    for name in withheld:
        path = cfg.mapping.get(name, name)
        if _resolve(schema, path) is not None:
            rec = rec.dropFields(path)
    return F.when(F.col("rec").isNotNull(), F.to_json(rec))


def sessionize(events: DataFrame, gap_minutes: int) -> DataFrame:
    """Fill a missing `session_id`: a user's session ends after `gap_minutes` without events.

    Input: user_id, event_time, event_id, session_id (may be null). Output: the same columns, with
    session_id set to `<user_id>-<epoch seconds of the session's first event>` where it was null, and
    `session_inferred` (true where the id was derived here).
    """
    by_user = Window.partitionBy("user_id").orderBy("event_time", "event_id")
    previous = F.lag("event_time").over(by_user)
    starts = previous.isNull() | (F.col("event_time").cast("long") - previous.cast("long") > gap_minutes * 60)
    with_start = events.withColumn(
        "_session_start",
        F.when(starts, F.col("event_time").cast("long")),
    ).withColumn(
        "_session_start",
        F.last("_session_start", ignorenulls=True).over(by_user.rowsBetween(Window.unboundedPreceding, 0)),
    )
    derived = F.concat_ws("-", F.col("user_id"), F.col("_session_start").cast("string"))
    return (
        with_start.withColumn("session_inferred", F.col("session_id").isNull())
        .withColumn("session_id", F.coalesce(F.col("session_id"), derived))
        .drop("_session_start")
    )


def bot_users(events: DataFrame, max_per_day: int, max_per_minute: int) -> DataFrame:
    """Users above `max_per_day` actions on any day or `max_per_minute` within any one minute.

    An action is what a person does at one moment: events that share a session id (an invoice, a
    basket) and a timestamp are one action, so the lines of one order stamped with the order's
    minute do not make its buyer a bot; events without a session id are one action each. What it
    can still misfire on: a person whose log has no session ids and many events per timestamp, or
    logs at a coarse clock (per minute) with many real sessions in a minute; and what it misses:
    a bot that spreads its requests under the limits.

    Input: user_id, event_time, event_date, session_id, event_id. Output: user_id, bot_reason (one
    row per bot).
    """
    actions = events.select(
        "user_id",
        "event_date",
        "event_time",
        F.coalesce(F.col("session_id"), F.col("event_id")).alias("_action"),
    ).dropDuplicates(["user_id", "_action", "event_time"])
    per_day = (
        actions.groupBy("user_id", "event_date").count().groupBy("user_id").agg(F.max("count").alias("day"))
    )
    per_minute = (
        actions.groupBy("user_id", F.date_trunc("minute", "event_time").alias("_minute"))
        .count()
        .groupBy("user_id")
        .agg(F.max("count").alias("minute"))
    )
    reasons = F.concat_ws(
        ",",
        F.when(F.col("day") > max_per_day, F.lit(f"events_per_day>{max_per_day}")),
        F.when(F.col("minute") > max_per_minute, F.lit(f"events_per_minute>{max_per_minute}")),
    )
    return (
        per_day.join(per_minute, "user_id")
        .where((F.col("day") > max_per_day) | (F.col("minute") > max_per_minute))
        .select("user_id", reasons.alias("bot_reason"))
    )


def flag_bots(events: DataFrame, bots: DataFrame) -> DataFrame:
    """Add `is_bot` and `bot_reason` from `bots` (user_id, bot_reason)."""
    return events.join(bots, "user_id", "left").withColumn("is_bot", F.col("bot_reason").isNotNull())
