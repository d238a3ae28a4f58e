"""The one place that builds or adopts the SparkSession.

Locally (no session yet, a `local[...]` master) it builds one sized for a small machine. On a cluster,
under spark-submit or on Databricks it adopts the session it finds and sets only the two SQL settings
the product's correctness depends on (UTC session time zone; microsecond parquet timestamps, which keep
delta-rs tables readable by delta-spark).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from importlib import resources

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from segmentation.config import Config

log = logging.getLogger(__name__)

REQUIRED_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


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
    if master.startswith("local"):
        for key, value in local_defaults(os.cpu_count() or 2).items():
            builder = builder.config(key, value)
    for key, value in cfg.spark.conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    _apply_required(spark)
    log.info("Spark %s session ready (master %s)", spark.version, spark.sparkContext.master)
    return spark


def _apply_required(spark: SparkSession) -> None:
    for key, value in REQUIRED_SQL_CONF.items():
        if spark.conf.get(key, None) != value:
            log.info("setting %s=%s for this session", key, value)
            spark.conf.set(key, value)


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
