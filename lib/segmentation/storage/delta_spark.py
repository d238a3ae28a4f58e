"""Delta tables through delta-spark: the default engine wherever Delta Lake's Spark jars are loaded
(`make setup` installs them for local sessions and the venv's spark-submit; Databricks has them built
in). Native MERGE, replaceWhere, idempotent appends (`txnAppId`/`txnVersion`), time travel, OPTIMIZE,
VACUUM and REORG; Delta's optimistic concurrency decides between concurrent writers.

Table operations go through Delta's SQL (MERGE INTO, DESCRIBE HISTORY, OPTIMIZE), which a Spark Connect
client sends like any query: open-source Spark Connect servers do not serve the `DeltaTable` API without
Delta Connect's server plugin. Two reads need Delta's log itself: the files of a snapshot, and the
idempotent-write versions (`txn` actions). In a classic session they come from Delta's snapshot object
through the JVM; under Spark Connect, where there is no JVM to reach, from Delta's reader and from the
log files read as a table (see `_logged_generation`)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from urllib.parse import unquote, urlparse

from py4j.protocol import Py4JError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from segmentation.config import StorageConfig
from segmentation.errors import StorageError
from segmentation.spark import default_parallelism, is_connect
from segmentation.storage.base import (
    TABLE_PROPERTIES,
    ReadPoint,
    TableFiles,
    TableStore,
    Txn,
    check_write_schema,
    concurrent_write_error,
    deletion_vector_error,
    guard_error,
    is_concurrent_commit_error,
    local_file,
    refuse_timestamp_ntz,
    sql_literal,
)
from segmentation.tables import ALL_TABLES

log = logging.getLogger(__name__)

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
HOW_TO_ADD = (
    f"run `make setup` (it installs the jars into .venv and its spark-submit adds them), or start Spark "
    f"with --packages {DELTA_PACKAGE} --conf spark.sql.extensions={DELTA_EXTENSION} "
    f"--conf spark.sql.catalog.spark_catalog={DELTA_CATALOG} (Databricks has them), "
    "or set storage.engine: delta-rs"
)


# The `txn` actions of Delta's log (commits and checkpoints alike): the idempotent-write versions.
_TXN_SCHEMA = StructType(
    [StructField("txn", StructType([StructField("appId", StringType()), StructField("version", LongType())]))]
)


def delta_spark_available(spark: SparkSession) -> bool:
    """Delta is detected by its classes and its catalog, not by the text of spark.sql.extensions:
    Delta's table classes load, and the session's catalog is Delta's (open source: DeltaCatalog as the
    session catalog with Delta's SQL parser; Databricks runtimes build Delta in without naming it).
    A Spark Connect client has no JVM to ask: there the server is asked for Delta's data source."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    if is_connect(spark):
        return _serves_delta(spark)
    jvm = getattr(spark.sparkContext, "_jvm", None)
    if jvm is None:
        return False
    try:
        jvm.java.lang.Class.forName(
            "io.delta.tables.DeltaTable", True, jvm.Thread.currentThread().getContextClassLoader()
        )
        state = spark._jsparkSession.sessionState()  # type: ignore[attr-defined]
        catalog = state.catalogManager().v2SessionCatalog().getClass().getName()
        parser = state.sqlParser().getClass().getName()
    except Exception:  # py4j raises its own error types for a missing class
        return False
    return "DeltaCatalog" in catalog and "Delta" in parser


def _serves_delta(spark: SparkSession) -> bool:
    """Whether a Spark Connect server resolves Delta's data source: reading a path that does not exist
    fails on a missing table with Delta, on a missing data source without it."""
    try:
        _ = spark.read.format("delta").load(f"/nonexistent-{uuid.uuid4().hex}").schema
    except PySparkException as exc:
        return "DATA_SOURCE_NOT_FOUND" not in str(exc)
    return True


class DeltaSparkStore(TableStore):
    engine_name = "delta-spark"

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        super().__init__(spark, cfg)
        if not delta_spark_available(spark):
            raise StorageError(
                f"storage.engine is delta-spark but the Delta Lake jars are not loaded: {HOW_TO_ADD}"
            )

    # ------------------------------------------------------------ naming

    def _catalog_mode(self) -> bool:
        return bool(self.cfg.catalog or self.cfg.schema)

    def location(self, name: str) -> str:
        name = self._check_name(name)
        if self._catalog_mode():
            return ".".join(p for p in (self.cfg.catalog, self.cfg.schema, name) if p)
        root = self.cfg.root
        if not urlparse(root).scheme:
            # Absolute, so a catalog table's LOCATION does not resolve against the warehouse directory.
            root = str(Path(root).resolve())
        return f"{root.rstrip('/')}/{name}"

    def catalog_name(self, name: str) -> str | None:
        return self.location(name) if self._catalog_mode() else None

    def _ident(self, name: str) -> str:
        """The table in SQL: its catalog name, or delta.`path`."""
        if self._catalog_mode():
            return self.location(name)
        return "delta.`" + self.location(name).replace("`", "``") + "`"

    def _history(self, name: str, limit: int | None = None) -> DataFrame:
        """DESCRIBE HISTORY: the table's commits, newest first."""
        return self.spark.sql(
            f"DESCRIBE HISTORY {self._ident(name)}" + (f" LIMIT {int(limit)}" if limit else "")
        )

    def _detail(self, name: str):
        return self.spark.sql(f"DESCRIBE DETAIL {self._ident(name)}").head()

    def _path(self, name: str) -> str:
        """The table's directory."""
        return self._detail(name).location if self._catalog_mode() else self.location(name)

    # ------------------------------------------------------------ reading

    def exists(self, name: str) -> bool:
        if self._catalog_mode():
            return self.spark.catalog.tableExists(self.location(name))
        if is_connect(self.spark):
            try:
                return self._detail(name).format == "delta"
            except AnalysisException:  # no table at the path (or not a Delta one)
                return False
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.location(name))

    def read(self, name: str, version: int | None = None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if self._catalog_mode():
            return reader.table(self.location(name))
        return reader.load(self.location(name))

    def version(self, name: str) -> int:
        return int(self._history(name, 1).select("version").head()[0])

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        rows = self._history(name, limit).select("version", "timestamp", "operation").collect()
        return [r.asDict() for r in rows]

    def _version_and_generation(self, name: str, app_id: str) -> tuple[int, int]:
        if is_connect(self.spark):
            version = self.version(name)
            return version, self._logged_generation(name, app_id, version)
        _, snap = self._jsnapshot(name)
        seen = snap.transactions().get(app_id)
        return int(snap.version()), int(seen.get()) if seen.isDefined() else 0

    def _logged_generation(self, name: str, app_id: str, version: int) -> int:
        """`app_id`'s idempotent-write version at `version`, read from the log files as a table (Spark
        Connect): the newest checkpoint up to `version`, which carries each app's latest version, and
        the commits after it up to `version`, named by path. The read stays one checkpoint and at most
        a checkpoint interval of commits however long the log grows (a stream commits every
        micro-batch). Versions only grow, so the largest one logged is the one at `version`."""
        log_dir = self._path(name).rstrip("/") + "/_delta_log"
        # a reader per read: a Spark Connect reader's plan keeps a reference to its options
        reader = lambda: self.spark.read.schema(_TXN_SCHEMA)  # noqa: E731
        # Spark's readers skip files named with a leading underscore, `_last_checkpoint` among them:
        # the newest checkpoint is found by listing (binaryFile reads no content unless asked for it).
        listed = self.spark.read.format("binaryFile").option("pathGlobFilter", "*.checkpoint*").load(log_dir)
        number = F.regexp_extract(F.element_at(F.split("path", "/"), -1), r"^(\d+)\.checkpoint", 1)
        numbers = listed.select(number.cast("long").alias("v")).where(F.col("v") <= version)
        newest = numbers.agg(F.max("v")).head()[0]
        newest = -1 if newest is None else int(newest)
        parts = []
        if newest >= 0:
            # a classic checkpoint (single or multi-part) is Parquet; a V2 one may be JSON
            glob = f"{newest:020d}.checkpoint*"
            parts += [
                reader().format(f).option("pathGlobFilter", f"{glob}.{f}").load(log_dir)
                for f in ("parquet", "json")
            ]
        if newest < version:  # none when the version read is the checkpoint's own
            parts.append(reader().json([f"{log_dir}/{v:020d}.json" for v in range(newest + 1, version + 1)]))
        mine = reduce(DataFrame.unionByName, parts).where(F.col("txn.appId") == app_id)
        return int(mine.agg(F.max("txn.version")).head()[0] or 0)

    def properties(self, name: str) -> dict[str, str]:
        return dict(self._detail(name).properties)

    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        pairs = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
        self._commit(
            name, lambda: self.spark.sql(f"ALTER TABLE {self._ident(name)} SET TBLPROPERTIES ({pairs})")
        )

    def partition_columns(self, name: str) -> list[str]:
        return list(self._detail(name).partitionColumns)

    def protocol(self, name: str) -> tuple[int, int]:
        detail = self._detail(name)
        return int(detail.minReaderVersion), int(detail.minWriterVersion)

    def _jsnapshot(self, name: str):
        """Delta's own snapshot object (through the JVM): its files with their deletion vectors."""
        jvm = self.spark.sparkContext._jvm
        path = self._detail(name).location if self._catalog_mode() else self.location(name)
        delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(self.spark._jsparkSession, path)
        empty = jvm.scala.Option.empty()
        return delta_log, delta_log.update(False, empty, empty)

    def snapshot(self, name: str) -> TableFiles:
        if is_connect(self.spark):
            return self._snapshot_from_reader(name)
        try:
            delta_log, snap = self._jsnapshot(name)
        except (TypeError, Py4JError) as exc:
            # Delta's log classes are not reachable under this name (a vendor runtime may package
            # Delta elsewhere): fall back to what the public API says, refusing where it cannot tell.
            log.warning(
                "table %s: Delta's log is not reachable (%s); listing files through a read", name, exc
            )
            return self._snapshot_from_reader(name)
        files = DataFrame(snap.allFiles().toDF(), self.spark).select(
            "path",
            F.col("deletionVector").isNotNull().alias("has_dv"),
            F.get_json_object("stats", "$.numRecords").cast("long").alias("rows"),
        )
        entries = files.collect()  # one row per data file of the log, not per table row
        with_dv = [r.path for r in entries if r.has_dv]
        if with_dv:
            raise deletion_vector_error(name, with_dv)
        root = delta_log.dataPath().toUri()
        local = root.getScheme() in (None, "file")
        base = root.getPath() if local else root.toString()
        paths = sorted(_resolve(base, r.path, local) for r in entries)
        rows = None if any(r.rows is None for r in entries) else sum(r.rows for r in entries)
        return TableFiles(name, int(snap.version()), tuple(paths), rows)

    def _snapshot_from_reader(self, name: str) -> TableFiles:
        """The snapshot's files as Delta's reader lists them. Without the log it cannot see which files
        carry deletion vectors, so a table that may have any (the deletionVectors feature) is refused."""
        detail = self._detail(name)
        if "deletionVectors" in (getattr(detail, "tableFeatures", None) or []):
            raise StorageError(
                f"table {name} may carry deletion vectors (its protocol has the feature) and this runtime's "
                "Delta log is not reachable to check its files; rewrite the table without them "
                "(REORG TABLE ... APPLY (PURGE), then ALTER TABLE ... DROP FEATURE deletionVectors)"
            )
        version = self.version(name)
        frame = self.read(name, version)
        files = tuple(sorted(local_file(f) for f in frame.inputFiles()))
        return TableFiles(name, version, files, frame.count())

    # ------------------------------------------------------------ writing

    def _writer(self, df: DataFrame, mode: str) -> DataFrameWriter:
        writer = df.write.format("delta").mode(mode)
        for key, value in TABLE_PROPERTIES.items():
            writer = writer.option(key, value)  # Delta applies `delta.*` options when it creates a table
        return writer

    def _save(self, writer: DataFrameWriter, name: str) -> None:
        if self._catalog_mode():
            writer.saveAsTable(self.location(name))
        else:
            writer.save(self.location(name))

    def _commit(self, name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            if is_concurrent_commit_error(exc):
                raise concurrent_write_error(name, exc) from exc
            raise

    def _guarded(self, name: str, writer: DataFrameWriter, guard: ReadPoint | None) -> None:
        """Save, committing only on top of `guard`'s generation. Delta checks the idempotent-write id
        inside its transaction: a write whose id another writer recorded first is skipped, and one
        recorded while this transaction ran fails it; a skip is told apart from a commit by a token
        in the commit's userMetadata."""
        if guard is None:
            self._commit(name, lambda: self._save(writer, name))
            return
        self.check_guard(guard)
        token = f"{guard.app_id}:{guard.txn[1]}:{uuid.uuid4().hex}"
        tagged = (
            writer.option("txnAppId", guard.app_id)
            .option("txnVersion", str(guard.txn[1]))
            .option("userMetadata", token)
        )
        self._commit(name, lambda: self._save(tagged, name))
        newest = self.version(name)
        since = newest - (guard.version if guard.version is not None else -1)
        commits = self._history(name, max(1, since)).where(F.col("userMetadata") == token)
        if commits.isEmpty():
            raise guard_error(guard, f"committed generation {guard.txn[1]} first")

    def overwrite(
        self,
        df: DataFrame,
        name: str,
        partition_by: list[str] | None = None,
        guard: ReadPoint | None = None,
    ) -> None:
        refuse_timestamp_ntz(df.schema, name)
        writer = self._writer(df, "overwrite").option("overwriteSchema", "true")
        self._guarded(name, writer.partitionBy(*(partition_by or [])), guard)

    def _replace_where(
        self, df: DataFrame, name: str, column: str, values: list, guard: ReadPoint | None
    ) -> None:
        parts = self.partition_columns(name)
        if parts != [column]:
            raise StorageError(f"table {name} is partitioned by {parts}, the write replaces by [{column}]")
        evolving = check_write_schema(self.read(name).schema, df.schema, name)
        predicate = f"`{column}` IN ({', '.join(sql_literal(v) for v in values)})"
        # replaceWhere also checks that every row written matches the predicate.
        writer = self._writer(df, "overwrite").option("replaceWhere", predicate)
        if evolving:
            writer = writer.option("mergeSchema", "true")
        self._guarded(name, writer.partitionBy(column), guard)

    def append(
        self, df: DataFrame, name: str, partition_by: list[str] | None = None, txn: Txn | None = None
    ) -> bool:
        refuse_timestamp_ntz(df.schema, name)
        evolving = False
        if self.exists(name):
            evolving = check_write_schema(self.read(name).schema, df.schema, name)
            if txn is not None and self._seen(name, txn):
                log.info("table %s already has write %s v%d; skipping", name, txn[0], txn[1])
                return False
        writer = self._writer(df, "append").partitionBy(*(partition_by or []))
        if evolving:
            writer = writer.option("mergeSchema", "true")
        if txn is not None:
            # Delta also skips a write whose (txnAppId, txnVersion) a concurrent writer committed.
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))
        self._commit(name, lambda: self._save(writer, name))
        return True

    def _seen(self, name: str, txn: Txn) -> bool:
        return self._version_and_generation(name, txn[0])[1] >= txn[1]

    def _merge(self, df: DataFrame, name: str, keys: list[str]) -> None:
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        touched = self._merged_partitions(df, self.partition_columns(name), keys)
        if touched is not None:
            # A literal predicate on the target is what Delta prunes files by (and checks conflicts
            # against); the join condition alone reads every partition.
            column, values = touched
            condition += f" AND t.`{column}` IN ({', '.join(sql_literal(v) for v in values)})"
        source = f"_merge_source_{uuid.uuid4().hex}"  # a session temp view: SQL's way to name a frame
        df.createOrReplaceTempView(source)
        statement = (
            f"MERGE INTO {self._ident(name)} AS t USING `{source}` AS s ON {condition} "
            "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        )
        try:
            self._commit(name, lambda: self.spark.sql(statement).collect())
        finally:
            self.spark.catalog.dropTempView(source)

    # ------------------------------------------------------------ maintenance

    def optimize(self, name: str) -> dict[str, int]:
        metrics = self.spark.sql(f"OPTIMIZE {self._ident(name)}").head().metrics
        return {"files_removed": int(metrics.numFilesRemoved), "files_added": int(metrics.numFilesAdded)}

    def vacuum(self, name: str, retain_hours: float, enforce_retention: bool = True) -> int:
        settings = {
            "spark.databricks.delta.retentionDurationCheck.enabled": str(enforce_retention).lower(),
            # VACUUM lists the table's directories in this many tasks; Spark's default of 10,000 took a
            # minute for one small table on two cores. One task per core lists as fast.
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
                max(2, default_parallelism(self.spark))
            ),
        }
        saved = {key: self.spark.conf.get(key, None) for key in settings}
        for key, value in settings.items():
            self.spark.conf.set(key, value)
        try:
            statement = f"VACUUM {self._ident(name)} RETAIN {float(retain_hours)} HOURS"
            deleted = self.spark.sql(statement + " DRY RUN").count()
            if deleted:
                self.spark.sql(statement).collect()
        finally:
            for key, value in saved.items():
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)
        return deleted

    def purge_deletion_vectors(self, name: str) -> int:
        if is_connect(self.spark):
            # No log object to count them by: REORG rewrites exactly the files that have them.
            if "deletionVectors" not in (self._detail(name).tableFeatures or []):
                return 0
            metrics = self.spark.sql(f"REORG TABLE {self._ident(name)} APPLY (PURGE)").head().metrics
            with_dv = int(metrics.numFilesRemoved)
        else:
            _, snap = self._jsnapshot(name)
            with_dv = (
                DataFrame(snap.allFiles().toDF(), self.spark).where("deletionVector IS NOT NULL").count()
            )
            if with_dv:
                self.spark.sql(f"REORG TABLE {self._ident(name)} APPLY (PURGE)").collect()
        if with_dv:
            self.spark.sql(
                f"ALTER TABLE {self._ident(name)} SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'false')"
            )
        return with_dv

    # ------------------------------------------------------------ SQL names

    def register_views(self) -> list[str]:
        """Plain names for `segment sql`, with Delta's time travel and history on them: catalog tables
        are made the current schema's; path tables become external tables of the session's in-memory
        catalog (nothing persists, no data moves). A shared Hive metastore, and a Spark Connect server
        (whose catalog every client session shares), get temporary views only, so nothing is created in
        them (time travel then reads `delta.`<path>` VERSION AS OF n`)."""
        if self._catalog_mode():
            if self.cfg.catalog:
                self.spark.catalog.setCurrentCatalog(self.cfg.catalog)
            self.spark.catalog.setCurrentDatabase(self.cfg.schema)
            return [name for name in ALL_TABLES if self.exists(name)]
        if is_connect(self.spark):
            return super().register_views()
        if self.spark.conf.get("spark.sql.catalogImplementation", "in-memory") != "in-memory":
            return super().register_views()
        registered = []
        for name in ALL_TABLES:
            if not self.exists(name):
                continue
            self.spark.catalog.dropTempView(name)
            path = self.location(name).replace("'", "\\'")
            if self.spark.catalog.tableExists(name):
                if self.spark.catalog.getTable(name).tableType != "EXTERNAL":
                    raise StorageError(
                        f"the session already has a managed table named {name}; segment sql will not "
                        "replace it"
                    )
                # An external table of this session's in-memory catalog: dropping it deletes no data.
                self.spark.sql(f"DROP TABLE `{name}`")
            self.spark.sql(f"CREATE TABLE `{name}` USING delta LOCATION '{path}'")
            registered.append(name)
        return registered


def _resolve(base: str, path: str, local: bool) -> str:
    """A log entry's file path (relative and percent-encoded, or an absolute URI) as a reader opens it."""
    if urlparse(path).scheme:
        return local_file(path)
    return f"{base.rstrip('/')}/{unquote(path) if local else path}"
