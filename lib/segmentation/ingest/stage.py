"""Stage `ingest`: raw logs → events_bronze, events_silver and events_quarantine, all reconciled.

Every input record ends in exactly one place: silver (kept), quarantine (with a reason) or counted
as an exact duplicate. The counts are taken from the frames about to be written, before anything is
committed, and recorded in pipeline_runs.

Incremental by default: bronze's `source_file` column is the ledger of processed files, so a run reads
only files it has not seen. Their events are merged into silver by rebuilding the affected date
partitions (and their neighbours, so sessions crossing midnight stay whole) in one atomic commit.
That commit is guarded by the silver version the merge read (storage.base.ReadPoint): when another
ingest committed to silver in between, this run fails saying so and nothing of it lands, rather than
replacing the other run's events. Silver is written before quarantine and bronze; the ledger is
written last, so a crash in between makes the next run redo the batch: the batch's events already in
silver are replaced by the same events, and appends carry a transaction id per batch, so nothing is
doubled and the redone run's counts match the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.config import Config, InputConfig
from segmentation.errors import ConcurrentWriteError, ConfigError, DataQualityError, StageError
from segmentation.ingest.clean import (
    Rule,
    bot_users,
    builtin_rules,
    canonicalize,
    classify,
    count_broken,
    describe_source,
    detect_time_format,
    flag_bots,
    redacted_record,
    sessionize,
    source_columns,
    with_event_id,
    with_expressions,
)
from segmentation.ingest.readers import list_input_files, normalize_file, normalized_file, read_raw
from segmentation.privacy import hmac_key, pseudonymize
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.storage import ReadPoint, TableStore
from segmentation.tables import (
    EVENTS_BRONZE,
    EVENTS_QUARANTINE,
    EVENTS_SILVER,
    SILVER_BASE_COLUMNS,
    SILVER_COLUMNS,
)

log = logging.getLogger(__name__)

PRIVACY_PROPERTY = "segment.privacy.pseudonymize"
"""Recorded on each event table: the privacy.pseudonymize it was written with."""
REDACTED = "_redacted_record"
INGEST_WRITER = "segment-ingest"
"""The app id whose generation guards silver's read-modify-write (storage.base.ReadPoint)."""


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
    check_privacy_mode(store, cfg)
    files = list_input_files(ctx.spark, cfg.input)
    if not files:
        raise StageError(f"input.path {cfg.input.path} holds no input files (nothing was ingested)")
    # Silver's read point first, the ledger second: a file recorded after the read point belongs to
    # an ingest whose silver commit came after it too, and the guarded commit below refuses to land
    # on top of that.
    point = store.read_point(EVENTS_SILVER, INGEST_WRITER)
    seen = processed_files(store, point) if cfg.ingest.mode == "incremental" else set()
    new_files = [f for f in files if f not in seen]
    if not new_files:
        log.info(
            "ingest: all %d files under %s were ingested before; nothing to do", len(files), cfg.input.path
        )
        return IngestResult(files_seen_before=len(files))
    incremental = bool(seen)
    log.info(
        "ingest: %d new files (%d seen before), %s (events_silver version %s)",
        len(new_files),
        len(seen),
        "merging into silver" if incremental else "replacing the tables",
        point.version,
    )
    result = ingest_files(ctx, new_files, point, incremental, key)
    bots = (
        store.read(EVENTS_SILVER)
        .where("is_bot")
        .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("events"))
        .head()
    )
    result.bot_users, result.bot_events = bots["users"], bots["events"]
    result.files_seen_before = len(seen)
    log.info(
        "ingest: %d records in, %d kept, %d quarantined %s, %d duplicates; %d bot users in silver",
        result.rows_in,
        result.rows_out,
        result.rows_quarantined,
        result.quarantined_by_reason,
        result.rows_duplicate,
        result.bot_users,
    )
    return result


def ingest_files(
    ctx: StageContext, files: list[str], point: ReadPoint, incremental: bool, key: bytes | None
) -> IngestResult:
    """Read `files` with the configured reader, clean and classify every record, and write the batch:
    silver (merged into the days it touches when `incremental`, else replacing the tables) in one
    commit guarded by `point`, then quarantine, then bronze (the ledger of processed files). Returns
    the batch's accounting; commits nothing when a fail rule is broken, most of the batch would be
    quarantined or the counts do not add up. `segment ingest` and each `segment stream` micro-batch
    call it."""
    cfg, store = ctx.cfg, ctx.store
    rules = builtin_rules(cfg.input, cfg.ingest)
    ctx.describe(f"ingest: read {len(files)} files")
    raw = read_raw(ctx.spark, cfg.input, files, ctx.paths.scratch(ctx.run_id))
    input_cfg = dataclasses.replace(cfg.input, time_format=detect_time_format(raw, cfg.input))
    redacting = key is not None or bool(cfg.privacy.pii_fields)
    if redacting:
        raw = raw.withColumn(REDACTED, redacted_record(raw, cfg.input, cfg.privacy.pii_fields, key))
    events = with_event_id(canonicalize(raw, input_cfg, keep=[REDACTED] if redacting else []), key)
    if redacting:
        # From here on (bronze and quarantine included) no raw id or withheld field is kept.
        events = events.withColumn("raw_record", F.col(REDACTED)).drop(REDACTED)
    checked = classify(events, rules).withColumn("run_id", F.lit(ctx.run_id))
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        warned = _apply_watch_rules(checked, rules)
        counts = reason_counts(checked)
        _refuse_mostly_rejected(counts, checked, raw, input_cfg, cfg.ingest.max_rejected_share)
        result = _write_silver(ctx, checked, counts, point, incremental, key, files)
        _write_rejected_and_bronze(ctx, checked, incremental, files)
    finally:
        checked.unpersist()
    record_privacy_mode(store, cfg)
    result.warnings_by_rule, result.new_files, result.incremental = warned, len(files), incremental
    return result


def check_privacy_mode(store: TableStore, cfg: Config) -> None:
    """Refuse to mix pseudonymized and raw ids in one lake: each event table records the mode it was
    written in, and an incremental run in the other mode is a config error (a full re-ingest
    rewrites them all and may change it)."""
    mode = str(cfg.privacy.pseudonymize).lower()
    if cfg.ingest.mode == "full":
        return
    for table in (EVENTS_SILVER, EVENTS_BRONZE, EVENTS_QUARANTINE):
        recorded = store.properties(table).get(PRIVACY_PROPERTY) if store.exists(table) else None
        if recorded is not None and recorded != mode:
            raise ConfigError(
                f"privacy.pseudonymize is {mode} but this lake's {table} was written with "
                f"privacy.pseudonymize: {recorded}; one lake never mixes raw and pseudonymized ids (set it "
                f"back, or re-ingest everything with ingest.mode: full, then re-run the later stages)"
            )


def record_privacy_mode(store: TableStore, cfg: Config) -> None:
    mode = str(cfg.privacy.pseudonymize).lower()
    for table in (EVENTS_SILVER, EVENTS_BRONZE, EVENTS_QUARANTINE):
        if store.exists(table) and store.properties(table).get(PRIVACY_PROPERTY) != mode:
            store.set_properties(table, {PRIVACY_PROPERTY: mode})


def processed_files(store: TableStore, point: ReadPoint, among: list[str] | None = None) -> set[str]:
    """Files a previous ingest has recorded in bronze (one name per file, not per record); with
    `among`, only those of these files."""
    if point.version is None or not store.exists(EVENTS_BRONZE):
        return set()
    names = store.read(EVENTS_BRONZE).select("source_file")
    if among is not None:
        names = names.where(normalized_file(F.col("source_file")).isin(among))
    return {normalize_file(r.source_file) for r in names.distinct().collect()}


def recorded_counts(store: TableStore, files: list[str]) -> IngestResult:
    """The accounting of `files`, ingested before, read back from the tables: their records in bronze,
    quarantined by reason, kept in silver, and the rest duplicates. For a stream micro-batch redone
    after its files were recorded (the first attempt's counts died with it)."""
    mine = normalized_file(F.col("source_file")).isin(files)
    rows_in = store.read(EVENTS_BRONZE).where(mine & F.col("raw_record").isNotNull()).count()
    quarantine = store.read(EVENTS_QUARANTINE).where(mine).groupBy("reason").count().collect()
    by_reason = {r["reason"]: r["count"] for r in quarantine}
    kept = store.read(EVENTS_SILVER).where(mine).count()
    rejected = sum(by_reason.values())
    return IngestResult(
        rows_in=rows_in,
        rows_out=kept,
        rows_quarantined=rejected,
        rows_duplicate=rows_in - kept - rejected,
        quarantined_by_reason=by_reason,
    )


def _write_silver(
    ctx: StageContext,
    checked: DataFrame,
    counts: dict[str | None, int],
    point: ReadPoint,
    incremental: bool,
    key: bytes | None,
    files: list[str],
) -> IngestResult:
    """Write the batch's good events into silver (sessions and bot flags derived over every event of
    the days written) in one commit guarded by `point`, after reconciling the batch; returns the
    batch's accounting. Nothing is written when the counts do not add up or another ingest
    committed to silver since `point`."""
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
            fresh, merged, rebuilt = _merge_silver(store, unique, point, files)
        else:
            fresh, merged, rebuilt = unique, unique, None
        result = _reconcile(counts, fresh.count())
        bots = bot_users(
            _bot_scope(store, merged, rebuilt, point),
            cfg.ingest.bot_max_events_per_day,
            cfg.ingest.bot_max_events_per_minute,
        )
        silver = flag_bots(sessionize(merged, cfg.ingest.session_gap_minutes), bots)
        silver = silver.select(*silver_columns(silver, cfg.privacy.pii_fields))
        try:
            if incremental:
                store.replace_where(silver, EVENTS_SILVER, "event_date", rebuilt, guard=point)
            else:
                store.overwrite(silver, EVENTS_SILVER, ["event_date"], guard=point)
        except ConcurrentWriteError as exc:
            raise ConcurrentWriteError(
                f"ingest: another ingest committed to {EVENTS_SILVER} after this run read it; nothing of "
                f"this run landed; run it again ({exc})"
            ) from exc
    finally:
        unique.unpersist()
    return result


def _write_rejected_and_bronze(
    ctx: StageContext, checked: DataFrame, incremental: bool, files: list[str]
) -> None:
    """Quarantine then bronze; bronze last, as the ledger of processed files. A file without a single
    record gets one bronze row with a null raw_record, so the ledger knows it too. Appends carry a
    transaction id per batch, so a batch redone after a crash is not written twice."""
    ctx.describe("ingest: quarantine and bronze")
    batch = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    ingested_at = F.current_timestamp().alias("ingested_at")
    rejected = checked.where(F.col("reject_reason").isNotNull()).select(
        F.col("reject_reason").alias("reason"), "raw_record", "source_file", "run_id", ingested_at
    )
    bronze = checked.select("raw_record", "source_file", "run_id", ingested_at)
    with_records = {normalize_file(r.source_file) for r in checked.select("source_file").distinct().collect()}
    empty = [f for f in files if f not in with_records]  # one row per file, not per record
    if empty:
        log.info("ingest: %d files hold no records (recorded as ingested): %s", len(empty), empty[:5])
        markers = ctx.spark.createDataFrame(
            [(None, f) for f in empty], "raw_record string, source_file string"
        ).select("raw_record", "source_file", F.lit(ctx.run_id).alias("run_id"), ingested_at)
        bronze = bronze.unionByName(markers)
    for frame, table in ((rejected, EVENTS_QUARANTINE), (bronze, EVENTS_BRONZE)):
        if incremental:
            ctx.store.append(frame, table, txn=(f"ingest-{table}-{batch}", 1))
        else:
            ctx.store.overwrite(frame, table)


# The canonical field each built-in reason is about (for naming its source in messages).
REASON_FIELDS = {
    "missing_user_id": "user_id",
    "invalid_user_id": "user_id",
    "invalid_timestamp": "event_time",
    "future_timestamp": "event_time",
    "missing_event_type": "event_type",
    "unknown_event_type": "event_type",
    "invalid_value": "value",
    "negative_value": "value",
}


def reason_counts(checked: DataFrame) -> dict[str | None, int]:
    """Records per reject reason (None: good records) of a classified batch: one small aggregation."""
    return {r["reject_reason"]: r["count"] for r in checked.groupBy("reject_reason").count().collect()}


def _refuse_mostly_rejected(
    counts: dict[str | None, int], checked: DataFrame, raw: DataFrame, cfg: InputConfig, limit: float
) -> None:
    """Commit nothing when more than `limit` of the batch would be quarantined: that is a wrong
    time format or mapping far more often than bad data, and a run that "succeeds" keeping nothing
    loses the batch silently. Names the top reason, its share, where the field comes from and one
    sample value."""
    total = sum(counts.values())
    rejected = total - counts.get(None, 0)
    if total == 0 or rejected / total <= limit:
        return
    top, n = max(((k, v) for k, v in counts.items() if k is not None), key=lambda kv: kv[1])
    sample_record = checked.where(F.col("reject_reason") == top).select("raw_record").head()[0]
    field_name = REASON_FIELDS.get(top)
    where = ""
    sample = sample_record
    if field_name is not None:
        column, _ = source_columns(with_expressions(raw, cfg), cfg)[field_name]
        value = (
            with_expressions(raw, cfg)
            .where(F.col("raw_record") == F.lit(sample_record))
            .select(column.cast("string"))
            .head()
        )
        sample = value[0] if value else sample_record
        where = f" in {describe_source(raw, cfg, field_name)}"
    shown = str(sample)[:120]
    raise DataQualityError(
        f"ingest: {n} of {total} records rejected as {top} (sample {shown!r}{where}); "
        f"{rejected / total:.0%} of the batch would be quarantined, above ingest.max_rejected_share "
        f"({limit:g}), so nothing was committed: check the input config (input.time_format, "
        "input.mapping, input.expressions) or raise ingest.max_rejected_share"
    )


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


def _merge_silver(
    store: TableStore, unique: DataFrame, point: ReadPoint, files: list[str]
) -> tuple[DataFrame, DataFrame, list[dt.date]]:
    """Merge a batch into silver as `point` read it: (the batch's events silver does not have yet,
    every event of the partitions to rewrite, those partitions' dates).

    The partitions are the batch's days and their neighbours, so sessions crossing midnight are derived
    again over all their events; inferred session ids are cleared for that. Events silver holds from
    the batch's own files (a batch redone after a crash before its ledger was written) are replaced
    by the batch, not counted as its duplicates, so the redone run's counts match the tables.
    """
    dates = sorted(r.event_date for r in unique.select("event_date").distinct().collect())  # days, not rows
    window = sorted({d + dt.timedelta(days=k) for d in dates for k in (-1, 0, 1)})
    existing = store.read(EVENTS_SILVER, point.version).where(F.col("event_date").isin(window))
    others = existing.where(~normalized_file(F.col("source_file")).isin(files))
    # Same record, same event id, same event time: a duplicate can only sit in the batch's own days.
    fresh = unique.join(
        others.where(F.col("event_date").isin(dates)).select("event_id"), "event_id", "left_anti"
    )
    kept = others.withColumn(
        "session_id", F.when(F.col("session_inferred"), F.lit(None)).otherwise(F.col("session_id"))
    ).select(*SILVER_BASE_COLUMNS)
    return fresh, kept.unionByName(fresh), window


def _bot_scope(
    store: TableStore, silver: DataFrame, rebuilt_dates: list[dt.date] | None, point: ReadPoint
) -> DataFrame:
    """Events bot detection looks at: the new silver rows and, when merging, the untouched days too
    (as `point` read them), so a user's bot flag depends on all of their history."""
    columns = ["user_id", "event_time", "event_date", "session_id", "event_id"]
    if rebuilt_dates is None:
        return silver.select(*columns)
    untouched = (
        store.read(EVENTS_SILVER, point.version)
        .where(~F.col("event_date").isin(rebuilt_dates))
        .select(*columns)
    )
    return untouched.unionByName(silver.select(*columns))


def silver_columns(silver: DataFrame, withheld: list[str]) -> list:
    """Silver's columns in order, the `privacy.pii_fields` among them withheld (typed nulls)."""
    return [
        F.lit(None).cast(silver.schema[c].dataType).alias(c) if c in withheld else F.col(c)
        for c in SILVER_COLUMNS
    ]


def _reconcile(counts: dict[str | None, int], kept: int) -> IngestResult:
    """The batch's accounting, from the frames about to be written and before anything is: every
    record read is kept, quarantined with a reason or an exact duplicate of a kept event."""
    by_reason = {reason: n for reason, n in counts.items() if reason is not None}
    good = counts.get(None, 0)
    rows_in = good + sum(by_reason.values())
    duplicates = good - kept
    if duplicates < 0:
        raise DataQualityError(
            f"ingest does not reconcile: {kept} events to keep but only {good} good records read; "
            "nothing was written"
        )
    return IngestResult(
        rows_in=rows_in,
        rows_out=kept,
        rows_quarantined=sum(by_reason.values()),
        rows_duplicate=duplicates,
        quarantined_by_reason=by_reason,
    )
