"""The one place that builds or adopts the SparkSession.

Locally (no session yet, a `local[...]` master) it builds one sized for a small machine. Any session it
builds (local, or against a cluster master named in `spark.master`) gets Delta Lake: the jars `make
setup` installed into the venv (`<venv>/share/delta-jars`) on its classpath, shipped to executors, with
Delta's session extension and catalog. Under spark-submit the JVM's classpath is already fixed: the
venv's spark-submit adds the same jars and settings (scripts/spark-submit.sh). On Databricks, or in a
session someone else built, it adopts what it finds and sets only the two SQL settings the product's
correctness depends on (UTC session time zone; microsecond parquet timestamps, which keep delta-rs
tables readable by delta-spark).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from importlib import resources
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

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


def get_spark(cfg: Config) -> SparkSession:
    """Return the session to use: the active one if any, else a new one built from `cfg.spark`."""
    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_required(active)
        return active

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
    log.info(
        "Spark %s session ready (master %s; Delta Lake %s)",
        spark.version,
        spark.sparkContext.master,
        "loaded" if _delta_loaded(spark) else "not loaded: tables go through delta-rs",
    )
    return spark


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
    launched_with = spark.sparkContext.getConf()
    recommended = {
        **RECOMMENDED_SQL_CONF,
        # Delta replays a table's log in this many tasks when it loads a snapshot: its default 50 made
        # 45 jobs of tiny tasks worth 45 s of a 3-minute pipeline on a 2-core standalone cluster (the
        # product's logs are small). One task per core, never more than Delta's default.
        "spark.databricks.delta.snapshotPartitions": str(
            min(50, max(2, spark.sparkContext.defaultParallelism))
        ),
    }
    for key, value in recommended.items():
        if not launched_with.contains(key) and spark.conf.get(key, None) != value:
            spark.conf.set(key, value)  # unless the job set it itself


def describe(spark: SparkSession, text: str) -> None:
    """Name the Spark jobs that follow, so the Spark UI reads like the pipeline."""
    spark.sparkContext.setJobDescription(text)


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
