"""Stage `ingest`: raw logs → events_bronze, events_silver and events_quarantine, all reconciled.

Every input record ends in exactly one place: silver (kept), quarantine (with a reason) or counted
as an exact duplicate. The stage checks `rows_in = rows_out + rows_quarantined + rows_duplicate` from
the tables it wrote and fails when it does not hold.
"""

from __future__ import annotations

import logging

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.config import CANONICAL_FIELDS, Config
from segmentation.errors import DataQualityError
from segmentation.ingest.clean import (
    builtin_rules,
    canonicalize,
    classify,
    count_broken,
    flag_bots,
    sessionize,
    with_event_id,
)
from segmentation.ingest.readers import read_raw
from segmentation.privacy import hmac_key, pseudonymize
from segmentation.runs import StageResult
from segmentation.spark import describe
from segmentation.storage import open_store
from segmentation.storage.names import EVENTS_BRONZE, EVENTS_QUARANTINE, EVENTS_SILVER

log = logging.getLogger(__name__)

SILVER_COLUMNS = (
    "event_id",
    *CANONICAL_FIELDS,
    "is_bot",
    "bot_reason",
    "source_file",
    "run_id",
    "event_date",
)


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    key = hmac_key(spark, cfg.privacy) if cfg.privacy.pseudonymize else None
    rules = builtin_rules(cfg.input, cfg.ingest)
    describe(spark, f"ingest: read {cfg.input.path}")
    raw = read_raw(spark, cfg.input)
    ingested_at = F.current_timestamp()
    checked = classify(with_event_id(canonicalize(raw, cfg.input)), rules)
    checked = checked.withColumn("run_id", F.lit(run_id)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
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

        describe(spark, "ingest: silver")
        good = checked.where(F.col("reject_reason").isNull())
        duplicates = good.groupBy("event_id").count().agg(F.sum(F.col("count") - 1)).head()[0] or 0
        unique = good.dropDuplicates(["event_id"]).withColumn("event_date", F.to_date("event_time"))
        if key is not None:
            unique = unique.withColumn("user_id", pseudonymize(F.col("user_id"), key))
        silver = flag_bots(
            sessionize(unique, cfg.ingest.session_gap_minutes),
            cfg.ingest.bot_max_events_per_day,
            cfg.ingest.bot_max_events_per_minute,
        )
        withheld = set(cfg.privacy.pii_fields)
        columns = [
            F.lit(None).cast(silver.schema[c].dataType).alias(c) if c in withheld else F.col(c)
            for c in SILVER_COLUMNS
        ]
        store.overwrite(silver.select(*columns), EVENTS_SILVER, ["event_date"])
        describe(spark, "ingest: quarantine")
        store.overwrite(
            checked.where(F.col("reject_reason").isNotNull()).select(
                F.col("reject_reason").alias("reason"),
                "raw_record",
                "source_file",
                "run_id",
                ingested_at.alias("ingested_at"),
            ),
            EVENTS_QUARANTINE,
        )
        describe(spark, "ingest: bronze")
        store.overwrite(
            checked.select("raw_record", "source_file", "run_id", ingested_at.alias("ingested_at")),
            EVENTS_BRONZE,
        )
        result = _reconcile(store, checked.count(), duplicates)
        result.details["warnings_by_rule"] = warned
        return result
    finally:
        checked.unpersist()


def _reconcile(store, rows_in: int, duplicates: int) -> StageResult:
    silver = store.read(EVENTS_SILVER)
    rows_out = silver.count()
    quarantine = store.read(EVENTS_QUARANTINE)
    by_reason = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    rows_quarantined = sum(by_reason.values())
    bots = (
        silver.where("is_bot")
        .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("events"))
        .head()
    )
    result = StageResult(
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
    return result
