"""Delta tables through delta-rs (`deltalake`), for machines without the Delta Spark jars.

Writes: Spark executors write parquet into a hidden staging directory inside the table; the driver
moves the files into place (a rename per file, no data passes through the driver), reads their
footers for file statistics and commits all of them in one Delta transaction. Until that commit the
table is unchanged: uncommitted files are invisible to every Delta reader and removed on failure.
Reads: the snapshot's active files, read by Spark with the table's own schema.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructField, StructType

from segmentation.config import StorageConfig
from segmentation.errors import StorageError
from segmentation.storage.base import (
    TableStore,
    Txn,
    adds_columns,
    describe_mismatch,
    refuse_timestamp_ntz,
    schemas_match,
)

log = logging.getLogger(__name__)

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
STAGING_PREFIX = "_staging-"  # leading underscore: Delta readers and VACUUM skip it


class DeltaRsStore(TableStore):
    engine_name = "delta-rs"

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        super().__init__(spark, cfg)
        if cfg.catalog:
            raise StorageError(
                "storage.catalog needs the delta-spark engine; the delta-rs engine writes path-based tables"
            )
        scheme = urlparse(cfg.root).scheme
        if scheme not in ("", "file") and len(scheme) > 1:
            raise StorageError(
                f"storage.root {cfg.root!r}: the delta-rs engine writes local paths only; "
                "use storage.engine: delta-spark on clusters"
            )
        self.root = Path(cfg.root.removeprefix("file://")).resolve()

    # ---------------------------------------------------------------- reading

    def location(self, name: str) -> str:
        return str(self.root / self._check_name(name))

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.location(name))

    def _table(self, name: str) -> DeltaTable:
        try:
            return DeltaTable(self.location(name))
        except Exception as exc:  # deltalake raises several types for a missing or broken table
            raise StorageError(f"cannot open table {name} at {self.location(name)}: {exc}") from exc

    def spark_schema(self, name: str) -> StructType:
        return StructType.fromJson(json.loads(self._table(name).schema().to_json()))

    def version(self, name: str) -> int:
        return self._table(name).version()

    def protocol(self, name: str) -> tuple[int, int]:
        proto = self._table(name).protocol()
        return proto.min_reader_version, proto.min_writer_version

    def read(self, name: str) -> DataFrame:
        table = self._table(name)
        schema = StructType.fromJson(json.loads(table.schema().to_json()))
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        partition_cols = set(table.metadata().partition_columns)
        # Partition columns live in the directory names; basePath makes Spark read them from there.
        df = self.spark.read.schema(schema).option("basePath", self.location(name)).parquet(*files)
        missing = partition_cols - set(df.columns)
        if missing:
            raise StorageError(f"table {name}: partition columns {sorted(missing)} not found in file paths")
        return df.select(*[f.name for f in schema.fields])

    # ---------------------------------------------------------------- writing

    def overwrite(self, df: DataFrame, name: str, partition_by: list[str] | None = None) -> None:
        self._write(df, name, mode="overwrite", partition_by=partition_by or [], replace_partitions=False)

    def overwrite_partitions(self, df: DataFrame, name: str, partition_by: list[str]) -> None:
        if len(partition_by) != 1:
            raise StorageError(f"table {name}: partition overwrite supports one partition column")
        self._write(df, name, mode="overwrite", partition_by=partition_by, replace_partitions=True)

    def append(
        self, df: DataFrame, name: str, partition_by: list[str] | None = None, txn: Txn | None = None
    ) -> bool:
        if txn is not None and self.exists(name):
            seen = self._table(name).transaction_version(txn[0])
            if seen is not None and seen >= txn[1]:
                log.info("table %s already has write %s v%d; skipping", name, txn[0], txn[1])
                return False
        self._write(df, name, mode="append", partition_by=partition_by or [], txn=txn)
        return True

    def _write(
        self,
        df: DataFrame,
        name: str,
        mode: str,
        partition_by: list[str],
        replace_partitions: bool = False,
        txn: Txn | None = None,
    ) -> None:
        location = Path(self.location(name))
        refuse_timestamp_ntz(df.schema, name)
        schema = _nullable(df.schema)
        existing = self._table(name) if self.exists(name) else None
        if existing is not None:
            table_schema = self.spark_schema(name)
            table_parts = list(existing.metadata().partition_columns)
            evolving = adds_columns(table_schema, schema) and (mode == "append" or replace_partitions)
            if evolving:
                # Nullable columns added in their own commit first: harmless alone (an all-null column).
                added = StructType(schema.fields[len(table_schema.fields) :])
                existing.alter.add_columns(list(DeltaSchema.from_json(added.json()).fields))
                existing = self._table(name)
                log.info(
                    "table %s: added columns %s (existing rows read them as null)", name, added.fieldNames()
                )
            if (mode == "append" or replace_partitions) and not (
                evolving or schemas_match(table_schema, schema)
            ):
                raise StorageError(
                    f"schema mismatch writing to {name}: {describe_mismatch(table_schema, schema)}"
                )
            if (mode == "append" or replace_partitions) and table_parts != partition_by:
                raise StorageError(
                    f"table {name} is partitioned by {table_parts}, the write by {partition_by}"
                )
        version_before = existing.version() if existing is not None else -1
        actions, written = self._write_files(df, location, partition_by)
        try:
            self._commit(
                name, location, existing, schema, actions, mode, partition_by, replace_partitions, txn
            )
        except Exception as exc:
            # delta-rs can raise after its commit landed (e.g. while reloading the new snapshot): the
            # files are then part of the table and must stay.
            if self._current_version(location) > version_before:
                raise StorageError(f"table {name}: commit landed but reported an error: {exc}") from exc
            for path in written:
                path.unlink(missing_ok=True)
            raise StorageError(f"commit to table {name} failed, table unchanged: {exc}") from exc
        log.info("%s %s: %d files committed (%s)", mode, name, len(actions), self.engine_name)

    def _write_files(
        self, df: DataFrame, location: Path, partition_by: list[str]
    ) -> tuple[list[AddAction], list[Path]]:
        staging = location / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        location.mkdir(parents=True, exist_ok=True)
        try:
            df.write.mode("errorifexists").partitionBy(*partition_by).parquet(str(staging))
            actions: list[AddAction] = []
            written: list[Path] = []
            for staged in sorted(staging.rglob("*.parquet")):
                relative = staged.relative_to(staging)
                target = location / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                written.append(target)
                actions.append(_add_action(target, relative, partition_by))
            return actions, written
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _current_version(location: Path) -> int:
        try:
            return DeltaTable(str(location)).version()
        except Exception:  # no table yet, or one delta-rs cannot open: nothing of ours landed
            return -1

    def _commit(
        self,
        name: str,
        location: Path,
        existing: DeltaTable | None,
        schema: StructType,
        actions: list[AddAction],
        mode: str,
        partition_by: list[str],
        replace_partitions: bool,
        txn: Txn | None,
    ) -> None:
        delta_schema = DeltaSchema.from_json(schema.json())
        props = CommitProperties(app_transactions=[Transaction(txn[0], txn[1])] if txn else None)
        if existing is None or (mode == "overwrite" and not replace_partitions):
            # A full overwrite may change schema and partitioning: that is a new table definition.
            create_table_with_add_actions(
                str(location),
                delta_schema,
                actions,
                mode="error" if existing is None else "overwrite",
                partition_by=partition_by or None,
                commit_properties=props,
            )
            return
        filters = None
        if replace_partitions:
            values = sorted({a.partition_values[partition_by[0]] for a in actions}, key=str)
            if not values:
                log.info("table %s: no partitions to replace", name)
                return
            filters = [(partition_by[0], "in", values)]
        existing.create_write_transaction(
            actions,
            mode,
            delta_schema,
            partition_by=partition_by or None,
            partition_filters=filters,
            commit_properties=props,
        )


def _nullable(schema: StructType) -> StructType:
    """Parquet columns written by Spark are nullable; the table schema says so too."""
    return StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])


def _add_action(target: Path, relative: Path, partition_by: list[str]) -> AddAction:
    partition_values: dict[str, str | None] = {}
    for part in relative.parts[:-1]:
        key, _, raw = part.partition("=")
        if key in partition_by:
            value = unquote(raw)  # Spark escapes special characters in directory names as %XX
            partition_values[key] = None if value == HIVE_NULL else value
    stat = target.stat()
    return AddAction(
        # Delta paths are relative URIs: percent-encode, so a literal '%' in a directory name survives.
        path=quote(relative.as_posix(), safe="/="),
        size=stat.st_size,
        partition_values=partition_values,
        modification_time=int(stat.st_mtime * 1000),
        data_change=True,
        stats=json.dumps(footer_stats(target)),
    )


def footer_stats(path: Path) -> dict:
    """Delta file statistics from the parquet footer: row count, null counts, min/max where exact."""
    meta = pq.read_metadata(path)
    stats: dict = {"numRecords": meta.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    arrow_schema = meta.schema.to_arrow_schema()
    top_level = {
        meta.schema.column(i).path: i
        for i in range(meta.num_columns)
        if "." not in meta.schema.column(i).path
    }
    for name, index in top_level.items():
        columns = [meta.row_group(g).column(index) for g in range(meta.num_row_groups)]
        if not columns or any(c.statistics is None or not c.statistics.has_null_count for c in columns):
            continue
        stats["nullCount"][name] = sum(c.statistics.null_count for c in columns)
        with_values = [c.statistics for c in columns if c.statistics.has_min_max]
        if not with_values or len(with_values) != sum(1 for c in columns if c.statistics.num_values > 0):
            continue
        arrow_type = str(arrow_schema.field(name).type)
        low = min(s.min for s in with_values)
        high = max(s.max for s in with_values)
        encoded = _encode_bounds(arrow_type, low, high)
        if encoded is not None:
            stats["minValues"][name], stats["maxValues"][name] = encoded
    return stats


def _encode_bounds(arrow_type: str, low, high):
    """JSON bounds Delta readers can trust for data skipping; None where in doubt (floats, long strings)."""
    if arrow_type.startswith(("int", "uint")):
        return int(low), int(high)
    if arrow_type == "date32[day]":
        return low.isoformat(), high.isoformat()
    if arrow_type.startswith("timestamp"):
        # Delta keeps millisecond bounds: floor the minimum and ceil the maximum so no row falls outside.
        low_ms = math.floor(_epoch_micros(low) / 1000)
        high_ms = math.ceil(_epoch_micros(high) / 1000)
        return _iso_ms(low_ms), _iso_ms(high_ms)
    if arrow_type in ("string", "large_string") and len(low) <= 32 and len(high) <= 32:
        return low, high
    return None


def _epoch_micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso_ms(epoch_ms: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=epoch_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
