"""The table layer: one small API over two Delta engines (DESIGN.md §4)."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from segmentation.config import StorageConfig
from segmentation.storage.base import TABLE_PROPERTIES, ReadPoint, TableFiles, TableStore, Txn
from segmentation.storage.delta_rs import DeltaRsStore
from segmentation.storage.delta_spark import DeltaSparkStore, delta_spark_available

log = logging.getLogger(__name__)

__all__ = [
    "TABLE_PROPERTIES",
    "DeltaRsStore",
    "DeltaSparkStore",
    "ReadPoint",
    "TableFiles",
    "TableStore",
    "Txn",
    "open_store",
]


def open_store(spark: SparkSession, cfg: StorageConfig) -> TableStore:
    """The store for `storage.engine`; `auto` takes delta-spark when Delta is loaded in the session
    (the default everywhere `make setup` ran, on clusters and Databricks), delta-rs otherwise."""
    engine = cfg.engine
    if engine == "auto":
        engine = "delta-spark" if delta_spark_available(spark) else "delta-rs"
    store: TableStore = DeltaSparkStore(spark, cfg) if engine == "delta-spark" else DeltaRsStore(spark, cfg)
    log.debug("table layer: %s engine, tables under %s", store.engine_name, cfg.catalog or cfg.root)
    return store
