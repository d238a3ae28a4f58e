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

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.config import CANONICAL_FIELDS, Config
from segmentation.errors import DataQualityError
from segmentation.ingest.clean import (
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
from segmentation.runs import StageResult
from segmentation.spark import describe
from segmentation.storage import TableStore, open_store
from segmentation.storage.names import EVENTS_BRONZE, EVENTS_QUARANTINE, EVENTS_SILVER

log = logging.getLogger(__name__)

# Silver before sessions and bot flags are derived (they are derived again when partitions are rebuilt).
BASE_COLUMNS = ("event_id", *CANONICAL_FIELDS, "source_file", "run_id", "event_date")
SILVER_COLUMNS = (
    "event_id",
    *CANONICAL_FIELDS,
    "session_inferred",
    "is_bot",
    "bot_reason",
    "source_file",
    "run_id",
    "event_date",
)


def processed_files(store: TableStore) -> set[str]:
    """Files a previous ingest has recorded in bronze (one name per file, not per record)."""
    if not (store.exists(EVENTS_BRONZE) and store.exists(EVENTS_SILVER)):
        return set()
    rows = store.read(EVENTS_BRONZE).select("source_file").distinct().collect()
    return {normalize_file(r.source_file) for r in rows}


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    key = hmac_key(spark, cfg.privacy) if cfg.privacy.pseudonymize else None
    rules = builtin_rules(cfg.input, cfg.ingest)
    files = list_input_files(spark, cfg.input)
    seen = processed_files(store) if cfg.ingest.mode == "incremental" else set()
    new_files = [f for f in files if f not in seen]
    if not new_files:
        log.info(
            "ingest: all %d files under %s were ingested before; nothing to do", len(files), cfg.input.path
        )
        return StageResult(details={"new_files": 0, "files_seen_before": len(files)})
    incremental = bool(seen)
    log.info(
        "ingest: %d new files (%d seen before), %s",
        len(new_files),
        len(seen),
        "merging into silver" if incremental else "replacing the tables",
    )
    batch = hashlib.sha256("\n".join(new_files).encode()).hexdigest()[:16]

    describe(spark, f"ingest: read {len(new_files)} files")
    checked = classify(with_event_id(canonicalize(read_raw(spark, cfg.input, new_files), cfg.input)), rules)
    checked = checked.withColumn("run_id", F.lit(run_id)).persist(StorageLevel.MEMORY_AND_DISK)
    cached = [checked]
    try:
        warned = _apply_watch_rules(checked, rules)
        silver_before = store.read(EVENTS_SILVER).count() if incremental else 0

        describe(spark, "ingest: silver")
        good = checked.where(F.col("reject_reason").isNull())
        unique = good.dropDuplicates(["event_id"]).withColumn("event_date", F.to_date("event_time"))
        if key is not None:
            unique = unique.withColumn("user_id", pseudonymize(F.col("user_id"), key))
        # Cached: the deduplicating shuffle feeds the duplicate count, sessions and bot detection,
        # which would each redo it (measured 13 s of a 46 s ingest at 1M events).
        unique = unique.select(*BASE_COLUMNS).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(unique)
        if incremental:
            fresh, merged, rebuilt = _merge_silver(store, unique)
        else:
            fresh, merged, rebuilt = unique, unique, None
        # Counted before writing, independently of the table: the reconciliation compares the two.
        duplicates = good.count() - fresh.count()
        bots = bot_users(
            _bot_scope(store, merged, rebuilt),
            cfg.ingest.bot_max_events_per_day,
            cfg.ingest.bot_max_events_per_minute,
        )
        silver = flag_bots(sessionize(merged, cfg.ingest.session_gap_minutes), bots)
        silver = silver.select(*_silver_columns(silver, cfg))
        if incremental:
            store.replace_where(silver, EVENTS_SILVER, "event_date", rebuilt)
        else:
            store.overwrite(silver, EVENTS_SILVER, ["event_date"])

        describe(spark, "ingest: quarantine and bronze")
        ingested_at = F.current_timestamp().alias("ingested_at")
        rejected = checked.where(F.col("reject_reason").isNotNull()).select(
            F.col("reject_reason").alias("reason"), "raw_record", "source_file", "run_id", ingested_at
        )
        bronze = checked.select("raw_record", "source_file", "run_id", ingested_at)
        for frame, table in ((rejected, EVENTS_QUARANTINE), (bronze, EVENTS_BRONZE)):
            if incremental:
                store.append(frame, table, txn=(f"ingest-{table}-{batch}", 1))
            else:
                store.overwrite(frame, table)

        rows_out = store.read(EVENTS_SILVER).count() - silver_before
        result = _reconcile(store, new_files, checked.count(), rows_out, duplicates)
        result.details.update(
            {"warnings_by_rule": warned, "new_files": len(new_files), "incremental": incremental}
        )
        return result
    finally:
        for frame in cached:
            frame.unpersist()


def _apply_watch_rules(checked: DataFrame, rules) -> dict[str, int]:
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
    ).select(*BASE_COLUMNS)
    return fresh, kept.unionByName(fresh), window


def _bot_scope(store: TableStore, silver: DataFrame, rebuilt_dates: list[dt.date] | None) -> DataFrame:
    """Events bot detection looks at: the new silver rows and, when merging, the untouched days too,
    so a user's bot flag depends on all of their history."""
    columns = ["user_id", "event_time", "event_date"]
    if rebuilt_dates is None:
        return silver.select(*columns)
    untouched = store.read(EVENTS_SILVER).where(~F.col("event_date").isin(rebuilt_dates)).select(*columns)
    return untouched.unionByName(silver.select(*columns))


def _silver_columns(silver: DataFrame, cfg: Config) -> list:
    withheld = set(cfg.privacy.pii_fields)
    return [
        F.lit(None).cast(silver.schema[c].dataType).alias(c) if c in withheld else F.col(c)
        for c in SILVER_COLUMNS
    ]


def _reconcile(
    store: TableStore, files: list[str], rows_in: int, rows_out: int, duplicates: int
) -> StageResult:
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
    return StageResult(
        rows_in=rows_in,
        rows_out=rows_out,
        rows_quarantined=rows_quarantined,
        rows_duplicate=duplicates,
        details={
            "quarantined_by_reason": by_reason,
            "bot_users": bots["users"],
            "bot_events": bots["events"],
        },
    )
