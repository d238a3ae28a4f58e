"""Stage `ingest`: raw logs → events_bronze, events_silver and events_quarantine, all reconciled.

Every input record ends in exactly one place: silver (kept), quarantine (with a reason) or counted
as an exact duplicate. The stage checks `rows_in = rows_out + rows_quarantined + rows_duplicate` from
the tables it wrote and fails when it does not hold.

Incremental by default: bronze's `source_file` column is the ledger of processed files, so a run reads
only files it has not seen. Their events are merged into silver by rebuilding the affected date
partitions (and their neighbours, so sessions crossing midnight stay whole) in one atomic commit.
Silver is written before quarantine and bronze; the ledger is written last, so a crash in between
makes the next run redo the batch, and event ids and idempotent appends keep that from duplicating.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.errors import DataQualityError, StageError
from segmentation.ingest.clean import (
    Rule,
    bot_users,
    builtin_rules,
    canonicalize,
    classify,
    count_broken,
    flag_bots,
    sessionize,
    with_event_id,
)
from segmentation.ingest.readers import list_input_files, normalize_file, read_raw
from segmentation.privacy import hmac_key, pseudonymize
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.storage import TableStore
from segmentation.tables import (
    EVENTS_BRONZE,
    EVENTS_QUARANTINE,
    EVENTS_SILVER,
    SILVER_BASE_COLUMNS,
    SILVER_COLUMNS,
)

log = logging.getLogger(__name__)


@dataclass
class IngestResult(StageResult):
    quarantined_by_reason: dict[str, int] = summary_field(default_factory=dict)
    bot_users: int = summary_field(0)
    bot_events: int = 0
    warnings_by_rule: dict[str, int] = field(default_factory=dict)
    new_files: int = 0
    files_seen_before: int = 0
    incremental: bool = False


def run(ctx: StageContext) -> IngestResult:
    cfg, store = ctx.cfg, ctx.store
    key = hmac_key(ctx.spark, cfg.privacy) if cfg.privacy.pseudonymize else None  # fails before reading
    rules = builtin_rules(cfg.input, cfg.ingest)
    files = list_input_files(ctx.spark, cfg.input)
    if not files:
        raise StageError(f"input.path {cfg.input.path} holds no input files (nothing was ingested)")
    seen = processed_files(store) if cfg.ingest.mode == "incremental" else set()
    new_files = [f for f in files if f not in seen]
    if not new_files:
        log.info(
            "ingest: all %d files under %s were ingested before; nothing to do", len(files), cfg.input.path
        )
        return IngestResult(files_seen_before=len(files))
    incremental = bool(seen)
    log.info(
        "ingest: %d new files (%d seen before), %s",
        len(new_files),
        len(seen),
        "merging into silver" if incremental else "replacing the tables",
    )
    ctx.describe(f"ingest: read {len(new_files)} files")
    raw = read_raw(ctx.spark, cfg.input, new_files)
    checked = classify(with_event_id(canonicalize(raw, cfg.input)), rules).withColumn(
        "run_id", F.lit(ctx.run_id)
    )
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        warned = _apply_watch_rules(checked, rules)
        silver_before = store.read(EVENTS_SILVER).count() if incremental else 0
        duplicates = _write_silver(ctx, checked, incremental, key)
        _write_rejected_and_bronze(ctx, checked, incremental, new_files)
        rows_out = store.read(EVENTS_SILVER).count() - silver_before
        result = _reconcile(store, new_files, checked.count(), rows_out, duplicates)
    finally:
        checked.unpersist()
    result.warnings_by_rule, result.new_files, result.incremental = warned, len(new_files), incremental
    return result


def processed_files(store: TableStore) -> set[str]:
    """Files a previous ingest has recorded in bronze (one name per file, not per record)."""
    if not (store.exists(EVENTS_BRONZE) and store.exists(EVENTS_SILVER)):
        return set()
    rows = store.read(EVENTS_BRONZE).select("source_file").distinct().collect()
    return {normalize_file(r.source_file) for r in rows}


def _write_silver(ctx: StageContext, checked: DataFrame, incremental: bool, key: bytes | None) -> int:
    """Write the batch's good events into silver (sessions and bot flags derived over every event of
    the days written); returns the number of duplicates dropped, counted before writing and
    independently of the table, since the reconciliation compares the two."""
    cfg, store = ctx.cfg, ctx.store
    ctx.describe("ingest: silver")
    good = checked.where(F.col("reject_reason").isNull())
    unique = good.dropDuplicates(["event_id"]).withColumn("event_date", F.to_date("event_time"))
    if key is not None:
        unique = unique.withColumn("user_id", pseudonymize(F.col("user_id"), key))
    # Cached: the deduplicating shuffle feeds the duplicate count, sessions and bot detection,
    # which would each redo it (measured 13 s of a 46 s ingest at 1M events).
    unique = unique.select(*SILVER_BASE_COLUMNS).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if incremental:
            fresh, merged, rebuilt = _merge_silver(store, unique)
        else:
            fresh, merged, rebuilt = unique, unique, None
        duplicates = good.count() - fresh.count()
        bots = bot_users(
            _bot_scope(store, merged, rebuilt),
            cfg.ingest.bot_max_events_per_day,
            cfg.ingest.bot_max_events_per_minute,
        )
        silver = flag_bots(sessionize(merged, cfg.ingest.session_gap_minutes), bots)
        silver = silver.select(*silver_columns(silver, cfg.privacy.pii_fields))
        if incremental:
            store.replace_where(silver, EVENTS_SILVER, "event_date", rebuilt)
        else:
            store.overwrite(silver, EVENTS_SILVER, ["event_date"])
    finally:
        unique.unpersist()
    return duplicates


def _write_rejected_and_bronze(
    ctx: StageContext, checked: DataFrame, incremental: bool, files: list[str]
) -> None:
    """Quarantine then bronze; bronze last, as the ledger of processed files. Appends carry a
    transaction id per batch, so a batch redone after a crash is not written twice."""
    ctx.describe("ingest: quarantine and bronze")
    batch = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    ingested_at = F.current_timestamp().alias("ingested_at")
    rejected = checked.where(F.col("reject_reason").isNotNull()).select(
        F.col("reject_reason").alias("reason"), "raw_record", "source_file", "run_id", ingested_at
    )
    bronze = checked.select("raw_record", "source_file", "run_id", ingested_at)
    for frame, table in ((rejected, EVENTS_QUARANTINE), (bronze, EVENTS_BRONZE)):
        if incremental:
            ctx.store.append(frame, table, txn=(f"ingest-{table}-{batch}", 1))
        else:
            ctx.store.overwrite(frame, table)


def _apply_watch_rules(checked: DataFrame, rules: list[Rule]) -> dict[str, int]:
    """Fail before writing anything when a fail rule is broken; log and return warn-rule counts."""
    broken = count_broken(checked, rules)
    failing = {r.name: broken[r.name] for r in rules if r.action == "fail" and broken[r.name]}
    if failing:
        raise DataQualityError(
            "ingest stopped by fail rules, nothing written: "
            + ", ".join(f"{name} broken by {n} records" for name, n in failing.items())
        )
    warned = {r.name: broken[r.name] for r in rules if r.action == "warn" and broken[r.name]}
    for name, n in warned.items():
        log.warning("ingest: rule %s broken by %d records (kept: action is warn)", name, n)
    return warned


def _merge_silver(store: TableStore, unique: DataFrame) -> tuple[DataFrame, DataFrame, list[dt.date]]:
    """Merge a batch into silver: (the batch's events silver does not have yet, every event of the
    partitions to rewrite, those partitions' dates).

    The partitions are the batch's days and their neighbours, so sessions crossing midnight are derived
    again over all their events; inferred session ids are cleared for that.
    """
    dates = sorted(r.event_date for r in unique.select("event_date").distinct().collect())  # days, not rows
    window = sorted({d + dt.timedelta(days=k) for d in dates for k in (-1, 0, 1)})
    existing = store.read(EVENTS_SILVER).where(F.col("event_date").isin(window))
    # Same record, same event id, same event time: a duplicate can only sit in the batch's own days.
    fresh = unique.join(
        existing.where(F.col("event_date").isin(dates)).select("event_id"), "event_id", "left_anti"
    )
    kept = existing.withColumn(
        "session_id", F.when(F.col("session_inferred"), F.lit(None)).otherwise(F.col("session_id"))
    ).select(*SILVER_BASE_COLUMNS)
    return fresh, kept.unionByName(fresh), window


def _bot_scope(store: TableStore, silver: DataFrame, rebuilt_dates: list[dt.date] | None) -> DataFrame:
    """Events bot detection looks at: the new silver rows and, when merging, the untouched days too,
    so a user's bot flag depends on all of their history."""
    columns = ["user_id", "event_time", "event_date"]
    if rebuilt_dates is None:
        return silver.select(*columns)
    untouched = store.read(EVENTS_SILVER).where(~F.col("event_date").isin(rebuilt_dates)).select(*columns)
    return untouched.unionByName(silver.select(*columns))


def silver_columns(silver: DataFrame, withheld: list[str]) -> list:
    """Silver's columns in order, the `privacy.pii_fields` among them withheld (typed nulls)."""
    return [
        F.lit(None).cast(silver.schema[c].dataType).alias(c) if c in withheld else F.col(c)
        for c in SILVER_COLUMNS
    ]


def _reconcile(
    store: TableStore, files: list[str], rows_in: int, rows_out: int, duplicates: int
) -> IngestResult:
    """Kept and quarantined counts measured from the written tables (quarantine by the batch's files,
    which a redone batch does not write twice); the stage fails when the counts do not add up."""
    quarantine = store.read(EVENTS_QUARANTINE).where(F.col("source_file").isin(files))
    by_reason = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    rows_quarantined = sum(by_reason.values())
    silver = store.read(EVENTS_SILVER)
    bots = (
        silver.where("is_bot")
        .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("events"))
        .head()
    )
    log.info(
        "ingest: %d records in, %d kept, %d quarantined %s, %d duplicates; %d bot users flagged",
        rows_in,
        rows_out,
        rows_quarantined,
        by_reason,
        duplicates,
        bots["users"],
    )
    if rows_in != rows_out + rows_quarantined + duplicates:
        raise DataQualityError(
            f"ingest does not reconcile: {rows_in} records in != {rows_out} kept + {rows_quarantined} "
            f"quarantined + {duplicates} duplicates"
        )
    return IngestResult(
        rows_in=rows_in,
        rows_out=rows_out,
        rows_quarantined=rows_quarantined,
        rows_duplicate=duplicates,
        quarantined_by_reason=by_reason,
        bot_users=bots["users"],
        bot_events=bots["events"],
    )
