"""Delta tables through delta-spark, where the Delta session extension is loaded (Databricks,
`spark-submit --packages io.delta:delta-spark_2.13:4.0.x`): native MERGE, dynamic partition overwrite
and idempotent appends (`txnAppId`/`txnVersion`)."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession

from segmentation.config import StorageConfig
from segmentation.errors import StorageError
from segmentation.storage.base import TableStore, Txn, adds_columns, describe_mismatch, schemas_match

log = logging.getLogger(__name__)

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.0"
HOW_TO_ADD = (
    f"start Spark with --packages {DELTA_PACKAGE} "
    "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
    "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog "
    "(Databricks has them), or set storage.engine: delta-rs"
)


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the Delta session extension is configured and its classes load."""
    if "DeltaSparkSessionExtension" not in (spark.conf.get("spark.sql.extensions", "") or ""):
        return False
    try:
        spark.sparkContext._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # type: ignore[union-attr]
    except Exception:  # py4j raises its own error type for a missing class
        return False
    return True


class DeltaSparkStore(TableStore):
    engine_name = "delta-spark"

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        super().__init__(spark, cfg)
        if not delta_spark_available(spark):
            raise StorageError(
                f"storage.engine is delta-spark but the Delta Lake jars are not loaded: {HOW_TO_ADD}"
            )

    def _catalog_mode(self) -> bool:
        return bool(self.cfg.catalog or self.cfg.schema)

    def location(self, name: str) -> str:
        name = self._check_name(name)
        if self._catalog_mode():
            return ".".join(p for p in (self.cfg.catalog, self.cfg.schema, name) if p)
        return f"{self.cfg.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        if self._catalog_mode():
            return self.spark.catalog.tableExists(self.location(name))
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.location(name))

    def read(self, name: str) -> DataFrame:
        if self._catalog_mode():
            return self.spark.read.table(self.location(name))
        return self.spark.read.format("delta").load(self.location(name))

    def version(self, name: str) -> int:
        from delta.tables import DeltaTable

        table = (
            DeltaTable.forName(self.spark, self.location(name))
            if self._catalog_mode()
            else DeltaTable.forPath(self.spark, self.location(name))
        )
        return int(table.history(1).select("version").head()[0])

    def _save(self, writer, name: str) -> None:
        if self._catalog_mode():
            writer.saveAsTable(self.location(name))
        else:
            writer.save(self.location(name))

    def overwrite(self, df: DataFrame, name: str, partition_by: list[str] | None = None) -> None:
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        self._save(writer.partitionBy(*(partition_by or [])), name)

    def overwrite_partitions(self, df: DataFrame, name: str, partition_by: list[str]) -> None:
        self._check_schema(df, name)
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .option("mergeSchema", "true")  # _check_schema lets only added columns through
        )
        self._save(writer.partitionBy(*partition_by), name)

    def append(
        self, df: DataFrame, name: str, partition_by: list[str] | None = None, txn: Txn | None = None
    ) -> bool:
        self._check_schema(df, name)
        writer = (
            df.write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .partitionBy(*(partition_by or []))
        )
        if txn is not None:
            # Delta skips a write whose (txnAppId, txnVersion) it has already committed.
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))
        self._save(writer, name)
        return True

    def _check_schema(self, df: DataFrame, name: str) -> None:
        if self.exists(name):
            current = self.read(name).schema
            if not (schemas_match(current, df.schema) or adds_columns(current, df.schema)):
                raise StorageError(
                    f"schema mismatch writing to {name}: {describe_mismatch(current, df.schema)}"
                )
