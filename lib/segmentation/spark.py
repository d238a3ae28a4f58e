"""The one place that builds or adopts the SparkSession.

Locally (no session yet, a `local[...]` master) it builds one sized for a small machine. Any session it
builds (local, or against a cluster master named in `spark.master`) gets Delta Lake: the jars `make
setup` installed into the venv (`<venv>/share/delta-jars`) on its classpath, shipped to executors, with
Delta's session extension and catalog. Under spark-submit the JVM's classpath is already fixed: the
venv's spark-submit adds the same jars and settings (scripts/spark-submit.sh). On Databricks, or in a
session someone else built, it adopts what it finds and sets only the two SQL settings the product's
correctness depends on (UTC session time zone; microsecond parquet timestamps, which keep delta-rs
tables readable by delta-spark).

Under Spark Connect (`spark.remote`, the `SPARK_REMOTE` variable, or an adopted Connect session such as
Databricks serverless) this process holds only a client: no JVM, no SparkContext. The server owns the
master, the jars and Delta; what the product asked the SparkContext for (parallelism, master, job
descriptions) comes from the helpers below, which work on both kinds of session.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.config import Config

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

REQUIRED_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


RECOMMENDED_SQL_CONF = {
    # The stages cache frames that come out of a shuffle (ingest's deduplicated events, the features'
    # grains); by default adaptive execution may not change a cached plan's partitioning, so every
    # later stage over it ran spark.sql.shuffle.partitions (200) tasks whatever the data's size. On a
    # standalone cluster of two 1-core workers that took ingest of 100k events from 55 to 109 s.
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}


def local_cores(master: str) -> int:
    """The cores a local master runs tasks on: N for local[N], every core for local[*]."""
    match = re.match(r"local\[(\d+)", master)
    return int(match.group(1)) if match else os.cpu_count() or 2


def local_defaults(cores: int) -> dict[str, str]:
    """Settings for a session this process builds itself on one small machine."""
    log4j = resources.files("segmentation") / "resources" / "log4j2.properties"
    return {
        "spark.sql.shuffle.partitions": str(max(2, cores)),
        "spark.default.parallelism": str(max(2, cores)),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
        "spark.sql.adaptive.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "4g",
        "spark.sql.sources.partitionOverwriteMode": "static",
        # No _SUCCESS markers inside table directories: they are not Delta files.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log4j}",
        **REQUIRED_SQL_CONF,
    }


def delta_jars() -> list[str]:
    """Delta Lake's Spark jars as `make setup` installs them into this interpreter's venv."""
    return sorted(str(p) for p in (Path(sys.prefix) / "share" / "delta-jars").glob("*.jar"))


def delta_settings(user: dict[str, str]) -> dict[str, str]:
    """Spark settings that load Delta Lake into a session this process builds, merged with the user's
    own `spark.conf` (their jars and extensions are kept; a session catalog they chose wins)."""
    jars = delta_jars()
    if not jars:
        return {}

    def joined(key: str, ours: list[str]) -> str:
        theirs = [v for v in (user.get(key) or "").split(",") if v]
        return ",".join(ours + [v for v in theirs if v not in ours])

    return {
        "spark.jars": joined("spark.jars", jars),
        "spark.sql.extensions": joined("spark.sql.extensions", [DELTA_EXTENSION]),
        "spark.sql.catalog.spark_catalog": user.get("spark.sql.catalog.spark_catalog") or DELTA_CATALOG,
    }


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect client session: no JVM in this process to reach through py4j."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def remote_url(cfg: Config) -> str | None:
    """The Spark Connect server to use: `spark.remote`, else the `SPARK_REMOTE` variable."""
    return cfg.spark.remote or os.environ.get("SPARK_REMOTE") or None


def get_spark(cfg: Config) -> SparkSession:
    """Return the session to use: the active one if any, else a new one built from `cfg.spark` (a
    Spark Connect client when `remote_url` names a server)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_required(active)
        return active
    remote = remote_url(cfg)
    if remote:
        return _connect(cfg, remote)

    # Python workers must run this interpreter (the venv), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Launched by spark-submit (or a pyspark shell): the JVM already has its master and settings.
        SparkContext._ensure_initialized()
        master = SparkConf().get("spark.master", "")
    else:
        master = cfg.spark.master or "local[*]"
        builder = builder.master(master)
    user = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in cfg.spark.conf.items()}
    settings = dict(local_defaults(local_cores(master))) if master.startswith("local") else {}
    if master.startswith("local") and not cfg.storage.catalog:
        # `segment sql` registers path tables in the session catalog; keep its warehouse directory
        # beside the tables rather than in whatever directory the command runs from.
        settings["spark.sql.warehouse.dir"] = str(Path(cfg.storage.root).resolve() / "_warehouse")
    settings.update(user)
    if not os.environ.get("PYSPARK_GATEWAY_PORT") and cfg.storage.engine != "delta-rs":
        settings.update(delta_settings(user))  # keeps the user's own jars and extensions
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = _launch(builder)
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    _apply_required(spark)
    _log_ready(spark)
    return spark


def _connect(cfg: Config, remote: str) -> SparkSession:
    """A Spark Connect client session to `remote`. The server decides master, jars and executor
    settings; `spark.conf` entries are sent as session settings (the server refuses static ones)."""
    if cfg.spark.master:
        log.info(
            "spark.master %s is not used: the Spark Connect server %s has its own", cfg.spark.master, remote
        )
    builder = SparkSession.builder.remote(remote).appName(cfg.spark.app_name)
    spark = builder.getOrCreate()
    for key, value in cfg.spark.conf.items():
        spark.conf.set(key, str(value).lower() if isinstance(value, bool) else str(value))
    _apply_required(spark)
    _log_ready(spark)
    return spark


def _log_ready(spark: SparkSession) -> None:
    log.info(
        "Spark %s session ready (%s %s; Delta Lake %s)",
        spark.version,
        "Spark Connect, server master" if is_connect(spark) else "master",
        master(spark),
        "loaded" if _delta_loaded(spark) else "not loaded: tables go through delta-rs",
    )


def master(spark: SparkSession) -> str:
    """The master URL the session's jobs run on (as the server reports it under Spark Connect)."""
    if is_connect(spark):
        return spark.conf.get("spark.master", None) or "unknown"
    return spark.sparkContext.master


_PARALLELISM: dict[str, int] = {}


def default_parallelism(spark: SparkSession) -> int:
    """The session's default parallelism (SparkContext.defaultParallelism: the cores of the executors,
    or `spark.default.parallelism`). Under Spark Connect there is no context to ask: the setting when
    the server has one, else the number of partitions Spark gives a range without a partition count,
    which is that same default (one small job, once per session)."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    if spark.session_id not in _PARALLELISM:
        setting = spark.conf.get("spark.default.parallelism", None)
        if setting:
            _PARALLELISM[spark.session_id] = int(setting)
        else:
            last = spark.range(0, 1 << 16).select(F.max(F.spark_partition_id())).head()[0]
            _PARALLELISM[spark.session_id] = int(last) + 1
    return _PARALLELISM[spark.session_id]


def _launch(builder: SparkSession.Builder) -> SparkSession:
    """Build the session; the JVM it starts writes its console output (Delta's VACUUM, for one) to
    stderr: stdout carries the command's results (`segment sql --format json` and the like)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # the JVM child inherits descriptor 1 as it is now
    try:
        return builder.getOrCreate()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _delta_loaded(spark: SparkSession) -> bool:
    from segmentation.storage.delta_spark import delta_spark_available

    return delta_spark_available(spark)


def _apply_required(spark: SparkSession) -> None:
    for key, value in REQUIRED_SQL_CONF.items():
        if spark.conf.get(key, None) != value:
            log.info("setting %s=%s for this session", key, value)
            spark.conf.set(key, value)
    # Under Spark Connect the launch settings are the server's and not visible apart from the session's.
    launched_with = None if is_connect(spark) else spark.sparkContext.getConf()
    recommended = {
        **RECOMMENDED_SQL_CONF,
        # Delta replays a table's log in this many tasks when it loads a snapshot: its default 50 made
        # 45 jobs of tiny tasks worth 45 s of a 3-minute pipeline on a 2-core standalone cluster (the
        # product's logs are small). One task per core, never more than Delta's default.
        "spark.databricks.delta.snapshotPartitions": str(min(50, max(2, default_parallelism(spark)))),
    }
    for key, value in recommended.items():
        if launched_with is not None and launched_with.contains(key):
            continue  # the job set it itself
        if spark.conf.get(key, None) == value:
            continue
        try:
            spark.conf.set(key, value)
        except PySparkException as exc:  # a managed server (serverless) allows few settings
            log.info("recommended setting %s=%s not applied: %s", key, value, str(exc).splitlines()[0])


def thread_pool(spark: SparkSession, workers: int) -> ThreadPoolExecutor:
    """Threads that run work on `spark`. Spark Connect's ML calls (a fitted model's centres, say) use
    the calling thread's active session, which a new thread lacks (pyspark 4.0): under Connect each
    thread of the pool makes `spark` its own on start."""
    if not is_connect(spark):
        return ThreadPoolExecutor(max_workers=workers)
    session = type(spark)
    return ThreadPoolExecutor(
        max_workers=workers, initializer=lambda: session._set_default_and_active_session(spark)
    )


_TAGS: dict[tuple[str, int], str] = {}


def describe(spark: SparkSession, text: str) -> None:
    """Name the Spark jobs that follow, so the Spark UI reads like the pipeline: their description, or
    under Spark Connect (which has none) their job tag, one at a time. Both belong to the calling
    thread, as the stages' parallel fits expect."""
    if not is_connect(spark):
        spark.sparkContext.setJobDescription(text)
        return
    key = (spark.session_id, threading.get_ident())
    previous = _TAGS.pop(key, None)
    if previous:
        spark.removeTag(previous)
    tag = text.replace(",", ";") or "-"  # a tag may hold no comma
    spark.addTag(tag)
    _TAGS[key] = tag


class Phases:
    """A stage's phases: each names the Spark jobs that follow (as `describe`) and is timed until the
    next begins, so the stage's details and log say where its time went."""

    def __init__(self, spark: SparkSession, stage: str) -> None:
        self.spark, self.stage = spark, stage
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._started = 0.0

    def __call__(self, phase: str) -> None:
        self._close()
        describe(self.spark, f"{self.stage}: {phase}")
        self._current, self._started = phase, time.perf_counter()

    def done(self) -> dict[str, float]:
        """Seconds per phase, the last one closed now."""
        self._close()
        log.info("%s: seconds by phase %s", self.stage, self.seconds)
        return dict(self.seconds)

    def _close(self) -> None:
        if self._current is not None:
            elapsed = time.perf_counter() - self._started
            self.seconds[self._current] = round(self.seconds.get(self._current, 0.0) + elapsed, 2)
            self._current = None
