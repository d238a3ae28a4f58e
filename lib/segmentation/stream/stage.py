"""Stage `stream`: files arriving under input.path → silver, bronze and quarantine, and their users'
segments, one micro-batch at a time (Structured Streaming).

Spark's file source finds the new files (only their names are read from it: the `binaryFile` format
with the content column pruned) and its checkpoint records which micro-batch holds which files. Each
micro-batch (`foreachBatch`) hands its files to the same `ingest_files` that `segment ingest` runs,
with the same readers, mapping, rules and quarantine, then assigns the users with events in those
files after the current segmenter's snapshot through the same `assign_users` that `segment assign`
runs (MERGE into user_segments, history, drift).

Exactly once, end to end: a micro-batch that was cut short (a crash, SIGKILL) is run again with the
same files when the query restarts from its checkpoint. Files bronze already records are not
ingested again (bronze is the ledger `segment ingest` keeps too; their counts are read back from the
tables); a file whose silver commit landed but whose bronze append did not is merged again,
replacing its own events; appends carry a transaction id per file set; assign writes only rows that
change. A cluster run publishing while a micro-batch assigns fails that micro-batch (the stream
stops with the error; restarted, it redoes it). Each micro-batch has one row in
pipeline_runs (stage `stream_batch`, run id `stream-<query id>-<batch id>`, the same across restarts),
with its records in, kept, quarantined and duplicate.

Under Spark Connect the micro-batch function runs in a Python process of the server, not here: it
gets the config (pickled) instead of this process's session and builds its own context on the batch
frame's session, reads the query id from the checkpoint, and the stream's totals are read back from
its pipeline_runs rows. A stop signal then stops the query at once; the micro-batch it cuts short is
redone on restart, as after a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import LongType

from segmentation.assign.stage import AssignResult, active_since, assign_users, current_segmenter
from segmentation.cluster.segmenter import Segmenter
from segmentation.config import Config
from segmentation.errors import SegmentationError, StageError
from segmentation.ingest.readers import normalize_file, normalized_file
from segmentation.ingest.stage import (
    INGEST_WRITER,
    check_privacy_mode,
    ingest_files,
    processed_files,
    recorded_counts,
)
from segmentation.pipeline import recorded
from segmentation.privacy import hmac_key
from segmentation.spark import is_connect
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import EVENTS_BRONZE, EVENTS_SILVER, PIPELINE_RUNS

log = logging.getLogger(__name__)

MICRO_BATCH = "stream_batch"
"""The stage name of each micro-batch's row in pipeline_runs."""
FILES_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
"""The `binaryFile` source's schema (a streaming source needs it given); only `path` is read."""
POLL_SECONDS = 2.0


@dataclass
class MicroBatchResult(StageResult):
    """One micro-batch: its ingest's accounting (the counts) and what its assign did."""

    stream_run: str = ""
    batch_id: int = 0
    files: int = 0
    files_seen_before: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    assign: AssignResult | None = None
    assign_skipped: str | None = None


@dataclass
class StreamResult(StageResult):
    trigger: str = summary_field("")
    checkpoint: str = summary_field("")
    batches: int = summary_field(0)
    files: int = summary_field(0)
    users_written: int = summary_field(0)
    stopped_by_signal: bool = summary_field(False)


@dataclass
class _Tally:
    """What this process's micro-batches did (written by the stream's thread, read after it ended)."""

    query_id: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    batches: list[MicroBatchResult] = field(default_factory=list)
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False  # set under `lock`: no micro-batch starts after it
    in_flight: int = 0


def run(ctx: StageContext) -> StreamResult:
    cfg = ctx.cfg
    key = hmac_key(ctx.spark, cfg.privacy) if cfg.privacy.pseudonymize else None  # fails before reading
    check_privacy_mode(ctx.store, cfg)
    checkpoint = str(ctx.paths.stream_checkpoint)
    tally = _Tally()
    connect = is_connect(ctx.spark)
    ctx.describe("stream: new files")
    writer = (
        new_files(ctx)
        .writeStream.queryName(f"segment-stream-{ctx.run_id}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(
            _ServerMicroBatch(cfg, ctx.run_id, key, checkpoint)
            if connect
            else lambda frame, batch_id: _micro_batch(ctx, key, tally, frame, batch_id)
        )
    )
    if cfg.stream.trigger == "available_now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=cfg.stream.interval)
    log.info(
        "stream: %s on %s (checkpoint %s, at most %d files per micro-batch)",
        cfg.stream.trigger,
        cfg.input.path,
        checkpoint,
        cfg.stream.max_files_per_trigger,
    )
    query = writer.start()
    tally.query_id = str(query.id)
    tally.started.set()
    stopped = _await(query, tally)
    if connect:
        totals = _recorded_batches(ctx, tally.query_id)
    else:
        done = tally.batches
        totals = {
            **{count: sum(getattr(b, count) for b in done) for count in _COUNTS},
            "batches": len(done),
            "files": sum(b.files for b in done),
            "users_written": sum(b.assign.users_written for b in done if b.assign is not None),
        }
    return StreamResult(
        **totals, trigger=cfg.stream.trigger, checkpoint=checkpoint, stopped_by_signal=stopped
    )


_COUNTS = ("rows_in", "rows_out", "rows_quarantined", "rows_duplicate")


def _batch_runs(query_id: str) -> str:
    """What the run ids of a query's micro-batches begin with."""
    return f"stream-{query_id[:8]}-"


def _batch_run(query_id: str, batch_id: int) -> str:
    """A micro-batch's run id: the same when a restarted query redoes it."""
    return f"{_batch_runs(query_id)}{batch_id:06d}"


def _recorded_batches(ctx: StageContext, query_id: str) -> dict[str, int]:
    """The totals of this stream run's micro-batches, from their pipeline_runs rows (Spark Connect:
    the micro-batches ran in the server's Python processes)."""
    details = F.col("details")
    rows = ctx.store.read(PIPELINE_RUNS).where(
        (F.col("stage") == MICRO_BATCH)
        & (F.col("status") == "success")
        & F.col("run_id").startswith(_batch_runs(query_id))
        & (F.get_json_object(details, "$.stream_run") == ctx.run_id)
    )
    total = rows.agg(
        *[F.coalesce(F.sum(count), F.lit(0)).alias(count) for count in _COUNTS],
        F.count(F.lit(1)).alias("batches"),
        F.coalesce(F.sum(F.get_json_object(details, "$.files").cast(LongType())), F.lit(0)).alias("files"),
        F.coalesce(
            F.sum(F.get_json_object(details, "$.assign.users_written").cast(LongType())), F.lit(0)
        ).alias("users_written"),
    ).head()
    return {name: int(total[name]) for name in total.asDict()}


@dataclass(frozen=True)
class _ServerMicroBatch:
    """The micro-batch function under Spark Connect, which pickles it to the server's Python: it
    carries the config, never this process's session, and works on the batch frame's session."""

    cfg: Config
    stream_run: str
    key: bytes | None
    checkpoint: str

    def __call__(self, frame: DataFrame, batch_id: int) -> None:
        spark = frame.sparkSession
        query_id = spark.read.json(self.checkpoint.rstrip("/") + "/metadata").head()["id"]
        ctx = StageContext.create(spark, self.cfg, _batch_run(query_id, batch_id))
        recorded(ctx, MICRO_BATCH, lambda c: micro_batch(c, self.key, frame, batch_id, self.stream_run))


def new_files(ctx: StageContext) -> DataFrame:
    """The streaming DataFrame of files under input.path not yet processed by this checkpoint's query
    (path; read recursively, hidden and `_`-prefixed files left out as batch reads leave them out)."""
    stream = ctx.cfg.stream
    return (
        ctx.spark.readStream.format("binaryFile")
        .schema(FILES_SCHEMA)
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", stream.max_files_per_trigger)
        .option("maxFileAge", stream.max_file_age)
        .load(ctx.cfg.input.path)
        .select("path")
    )


def _await(query, tally: _Tally) -> bool:
    """Wait for the query to end (available_now: when every file is processed). SIGTERM or SIGINT
    stops it cleanly: no micro-batch starts after the signal, the one in progress finishes, then the
    query stops; returns whether a signal did. A failed micro-batch's own error is raised, not Spark's
    wrapping of it."""
    signalled = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            handlers[number] = signal.signal(number, lambda *_: signalled.set())
    try:
        while not query.awaitTermination(POLL_SECONDS):
            if signalled.is_set():
                log.info("stream: stop requested; stopping after the micro-batch in progress")
                with tally.lock:
                    tally.stopping = True
                while tally.in_flight:
                    time.sleep(0.2)
                query.stop()
                break
    except Exception:
        if isinstance(tally.error, StopRequested):
            return True
        if tally.error is not None:
            raise tally.error from None
        raise
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    if tally.error is not None and not isinstance(tally.error, StopRequested):
        raise tally.error  # a failure can end the query without awaitTermination raising
    return signalled.is_set()


class StopRequested(SegmentationError):
    """Raised into Spark by a micro-batch that would start after a stop signal: the query ends
    without committing it, and its files make the first micro-batch of the next start."""


def _micro_batch(
    ctx: StageContext, key: bytes | None, tally: _Tally, frame: DataFrame, batch_id: int
) -> None:
    tally.started.wait()
    with tally.lock:
        if tally.stopping:
            tally.error = StopRequested(f"micro-batch {batch_id} not started: the stream is stopping")
            raise tally.error
        tally.in_flight += 1
    batch_ctx = dataclasses.replace(ctx, run_id=_batch_run(tally.query_id, batch_id))
    try:
        result = recorded(batch_ctx, MICRO_BATCH, lambda c: micro_batch(c, key, frame, batch_id, ctx.run_id))
    except BaseException as exc:
        tally.error = exc
        raise
    finally:
        with tally.lock:
            tally.in_flight -= 1
    tally.batches.append(result)


def micro_batch(
    ctx: StageContext, key: bytes | None, frame: DataFrame, batch_id: int, stream_run: str
) -> MicroBatchResult:
    """Ingest the micro-batch's files (those bronze does not hold yet; the others, from a redone
    micro-batch, are counted from the tables), then assign their users."""
    store = ctx.store
    files = sorted({normalize_file(r.path) for r in frame.collect()})  # names only, at most a trigger's
    point = store.read_point(EVENTS_SILVER, INGEST_WRITER)
    seen = processed_files(store, point, files)
    todo = [f for f in files if f not in seen]
    parts = []
    if seen:
        log.info(
            "stream batch %d: %d of its %d files were ingested before (a redone micro-batch): counted "
            "from the tables",
            batch_id,
            len(seen),
            len(files),
        )
        parts.append(recorded_counts(store, sorted(seen)))
    if todo:
        incremental = point.version is not None and store.exists(EVENTS_BRONZE)
        parts.append(ingest_files(ctx, todo, point, incremental, key))
    result = MicroBatchResult(
        rows_in=sum(p.rows_in for p in parts),
        rows_out=sum(p.rows_out for p in parts),
        rows_quarantined=sum(p.rows_quarantined for p in parts),
        rows_duplicate=sum(p.rows_duplicate for p in parts),
        stream_run=stream_run,
        batch_id=batch_id,
        files=len(files),
        files_seen_before=len(seen),
        quarantined_by_reason=dict(sum((Counter(p.quarantined_by_reason) for p in parts), Counter())),
    )
    if not ctx.cfg.stream.assign:
        result.assign_skipped = "stream.assign is false"
    elif files:
        segmenter = _segmenter(ctx)
        if segmenter is None:
            result.assign_skipped = "no fitted segmenter yet (run `segment cluster`)"
        else:
            silver = store.read(EVENTS_SILVER)
            mine = silver.where(normalized_file(F.col("source_file")).isin(files))
            result.assign = assign_users(ctx, segmenter, silver, active_since(mine, segmenter.as_of))
    log.info(
        "stream batch %d: %d files, %d records in, %d kept, %d quarantined, %d duplicates; %s",
        batch_id,
        len(files),
        result.rows_in,
        result.rows_out,
        result.rows_quarantined,
        result.rows_duplicate,
        f"{result.assign.users_written} segment rows written" if result.assign else result.assign_skipped,
    )
    return result


def _segmenter(ctx: StageContext) -> Segmenter | None:
    """The current segmenter, or None before the first fit (the micro-batch is ingested only)."""
    if not ctx.paths.current_segmenter.is_file():
        log.warning("stream: no fitted segmenter yet; ingesting without assigning (run `segment cluster`)")
        return None
    try:
        return current_segmenter(ctx)
    except StageError as exc:
        raise StageError(f"{exc}; the micro-batch is redone when the stream restarts") from None
