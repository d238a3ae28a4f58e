"""Delta tables through delta-rs (`deltalake`), for machines without the Delta Spark jars
(`storage.engine: delta-rs`; the default engine is delta-spark wherever its jars are loaded).

Writes: Spark executors write parquet into a hidden staging directory inside the table; the driver
moves the files into place (a rename per file, no data passes through the driver), reads their
footers for file statistics and commits all of them in one Delta transaction. Until that commit the
table is unchanged: uncommitted files are invisible to every Delta reader and removed on failure.
A concurrent writer's commit is checked by delta-rs's conflict checker: a conflicting write fails
with a clear error and leaves the table as the other writer left it.
Reads: the snapshot's active files, read by Spark with the table's own schema; a snapshot with
deletion vectors is refused rather than read whole (Spark's parquet reader would ignore them).
MERGE is a rewrite of the partitions the keys touch (or of the table when it is not partitioned by a
key) in one commit; OPTIMIZE and VACUUM run in delta-rs, on this machine.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from segmentation.config import StorageConfig
from segmentation.errors import StorageError
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
    partition_string,
    refuse_timestamp_ntz,
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

    def _table(self, name: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.location(name), version=version)
        except Exception as exc:  # deltalake raises several types for a missing or broken table
            raise StorageError(f"cannot open table {name} at {self.location(name)}: {exc}") from exc

    def spark_schema(self, name: str) -> StructType:
        return _spark_schema(self._table(name))

    def version(self, name: str) -> int:
        return self._table(name).version()

    def _version_and_generation(self, name: str, app_id: str) -> tuple[int, int]:
        table = self._table(name)
        return table.version(), table.transaction_version(app_id) or 0

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        return [
            {
                "version": int(c["version"]),
                "timestamp": dt.datetime.fromtimestamp(c["timestamp"] / 1000, dt.UTC),
                "operation": c.get("operation"),
            }
            for c in self._table(name).history(limit)
        ]

    def properties(self, name: str) -> dict[str, str]:
        return dict(self._table(name).metadata().configuration)

    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        try:
            self._table(name).alter.set_table_properties(properties, raise_if_not_exists=False)
        except Exception as exc:  # deltalake raises its own types for a refused commit
            if is_concurrent_commit_error(exc):
                raise concurrent_write_error(name, exc) from exc
            raise StorageError(
                f"table {name}: setting properties {sorted(properties)} failed: {exc}"
            ) from exc

    def partition_columns(self, name: str) -> list[str]:
        return list(self._table(name).metadata().partition_columns)

    def protocol(self, name: str) -> tuple[int, int]:
        proto = self._table(name).protocol()
        return proto.min_reader_version, proto.min_writer_version

    def _active_files(self, name: str, table: DeltaTable) -> list[str]:
        """The snapshot's files as local paths, refusing deletion vectors."""
        if "deletionVectors" in (table.protocol().reader_features or []):
            with_dv = pa.table(table.deletion_vectors()).column("filepath").to_pylist()
            if with_dv:
                raise deletion_vector_error(name, with_dv)
        return [local_file(uri) for uri in table.file_uris()]

    def read(self, name: str, version: int | None = None) -> DataFrame:
        table = self._table(name, version)
        schema = _spark_schema(table)
        files = self._active_files(name, table)
        if not files:
            return self.spark.createDataFrame([], schema)
        partition_cols = set(table.metadata().partition_columns)
        # Partition columns live in the directory names; basePath makes Spark read them from there.
        df = self.spark.read.schema(schema).option("basePath", self.location(name)).parquet(*files)
        missing = partition_cols - set(df.columns)
        if missing:
            raise StorageError(f"table {name}: partition columns {sorted(missing)} not found in file paths")
        return df.select(*[f.name for f in schema.fields])

    def snapshot(self, name: str) -> TableFiles:
        table = self._table(name)
        files = self._active_files(name, table)
        counts = pa.table(table.get_add_actions(flatten=True)).column("num_records").to_pylist()
        rows = None if any(n is None for n in counts) else sum(counts)
        return TableFiles(name, table.version(), tuple(sorted(files)), rows)

    # ---------------------------------------------------------------- writing

    def overwrite(
        self,
        df: DataFrame,
        name: str,
        partition_by: list[str] | None = None,
        guard: ReadPoint | None = None,
    ) -> None:
        self._write(df, name, mode="overwrite", partition_by=partition_by or [], guard=guard)

    def _replace_where(
        self, df: DataFrame, name: str, column: str, values: list, guard: ReadPoint | None
    ) -> None:
        self._write(df, name, mode="overwrite", partition_by=[column], replace=(column, values), guard=guard)

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

    def _merge(self, df: DataFrame, name: str, keys: list[str]) -> None:
        existing = self.read(name)
        parts = self.partition_columns(name)
        touched = self._merged_partitions(df, parts, keys)
        if touched is not None:
            # Only the partitions the new rows fall in change: rewrite just those.
            column, values = touched
            kept = _unmatched(existing.where(F.col(column).isin(values)), df, keys)
            self.replace_where(kept.unionByName(df), name, column, values)
            return
        kept = _unmatched(existing, df, keys)
        self._write(kept.unionByName(df), name, mode="overwrite", partition_by=parts, keep_table=True)

    def _write(
        self,
        df: DataFrame,
        name: str,
        mode: str,
        partition_by: list[str],
        replace: tuple[str, Sequence] | None = None,
        txn: Txn | None = None,
        keep_table: bool = False,
        guard: ReadPoint | None = None,
    ) -> None:
        """Write `df`'s files, then commit them: as a new table definition (a full overwrite), appended,
        or replacing the rows of `replace` = (partition column, values) or of the whole table
        (`keep_table`: an overwrite that keeps the table's definition, as a merge's rewrite does).
        A guarded write commits against the version its guard read (delta-rs's conflict checker
        then sees every commit since, the guard's app transaction among them) with the guard's
        generation + 1 as its app transaction."""
        location = Path(self.location(name))
        refuse_timestamp_ntz(df.schema, name)
        schema = _nullable(df.schema)
        if guard is not None:
            self.check_guard(guard)
            txn = guard.txn
        existing = self._table(name) if self.exists(name) else None
        keeps_definition = mode == "append" or replace is not None or keep_table
        if guard is not None and existing is not None and guard.version is not None:
            pinned = self._table(name, guard.version)
            if not keeps_definition and _same_definition(pinned, schema, partition_by):
                # A full overwrite that keeps schema and partitioning: commit it as a write on the
                # pinned version, so the conflict checker covers it too.
                keeps_definition, keep_table = True, True
            if keeps_definition:
                existing = pinned
        if existing is not None and keeps_definition:
            table_parts = list(existing.metadata().partition_columns)
            if table_parts != partition_by:
                raise StorageError(
                    f"table {name} is partitioned by {table_parts}, the write by {partition_by}"
                )
            if check_write_schema(self.spark_schema(name), schema, name):
                # Nullable columns added in their own commit first: harmless alone (an all-null column).
                added = StructType(schema.fields[len(existing.schema().fields) :])
                existing.alter.add_columns(list(DeltaSchema.from_json(added.json()).fields))
                # Guarded writes go on from the version with the new columns: the guard was checked
                # just before, and the commit in between is this writer's own.
                existing = self._table(name)
                log.info(
                    "table %s: added columns %s (existing rows read them as null)", name, added.fieldNames()
                )
        new_definition = existing is None or not keeps_definition
        actions, written = self._write_files(df, location, partition_by)
        if replace is not None:
            allowed = {partition_string(v) for v in replace[1]}
            outside = sorted({a.partition_values[replace[0]] for a in actions} - allowed, key=str)
            if outside:
                for path in written:
                    path.unlink(missing_ok=True)
                raise StorageError(
                    f"table {name}: the write has rows outside the partitions it replaces "
                    f"({replace[0]} in {outside[:5]}); nothing was committed"
                )
        try:
            if guard is not None and new_definition:
                self.check_guard(guard)  # a new definition is not conflict-checked: look once more
            self._commit(
                location, existing, new_definition, schema, actions, mode, partition_by, replace, txn
            )
        except Exception as exc:
            # delta-rs can raise after its commit landed (e.g. while reloading the new snapshot): the
            # files are then part of the table and must stay. Another writer's commit is not ours.
            if _landed(location, actions):
                raise StorageError(f"table {name}: commit landed but reported an error: {exc}") from exc
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(exc, StorageError):
                raise
            created_meanwhile = existing is None and self.exists(name)
            if guard is not None and created_meanwhile:
                raise guard_error(guard, "created the table") from exc
            if is_concurrent_commit_error(exc) or created_meanwhile:
                raise concurrent_write_error(name, exc) from exc
            raise StorageError(f"commit to table {name} failed, table unchanged: {exc}") from exc
        recorded = _product_properties(existing) if new_definition else {}
        if recorded:
            # What the product recorded on the table outlives an overwrite, as in delta-spark (delta-rs
            # refuses keys outside delta.* in a new definition, so they follow in their own commit).
            self.set_properties(name, recorded)
        log.info("%s %s: %d files committed (%s)", mode, name, len(actions), self.engine_name)

    def _write_files(
        self, df: DataFrame, location: Path, partition_by: list[str]
    ) -> tuple[list[AddAction], list[Path]]:
        staging = location / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        location.mkdir(parents=True, exist_ok=True)
        try:
            df.write.mode("error").partitionBy(*partition_by).parquet(str(staging))
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
    def _commit(
        location: Path,
        existing: DeltaTable | None,
        new_definition: bool,
        schema: StructType,
        actions: list[AddAction],
        mode: str,
        partition_by: list[str],
        replace: tuple[str, Sequence] | None,
        txn: Txn | None,
    ) -> None:
        delta_schema = DeltaSchema.from_json(schema.json())
        props = CommitProperties(app_transactions=[Transaction(txn[0], txn[1])] if txn else None)
        if existing is None or new_definition:
            # A new table, or a full overwrite that may change schema and partitioning: a new table
            # definition, with the product's table properties.
            create_table_with_add_actions(
                str(location),
                delta_schema,
                actions,
                mode="error" if existing is None else "overwrite",
                partition_by=partition_by or None,
                configuration=TABLE_PROPERTIES,
                commit_properties=props,
            )
            return
        filters = None
        if replace is not None:
            column, values = replace
            filters = [(column, "in", [partition_string(v) for v in values])]
        existing.create_write_transaction(
            actions,
            mode,
            delta_schema,
            partition_by=partition_by or None,
            partition_filters=filters,
            commit_properties=props,
        )

    # ---------------------------------------------------------------- maintenance

    def optimize(self, name: str) -> dict[str, int]:
        metrics = self._table(name).optimize.compact()
        return {
            "files_removed": int(metrics.get("numFilesRemoved", 0)),
            "files_added": int(metrics.get("numFilesAdded", 0)),
        }

    def vacuum(self, name: str, retain_hours: float, enforce_retention: bool = True) -> int:
        deleted = self._table(name).vacuum(
            retention_hours=math.ceil(retain_hours),
            dry_run=False,
            enforce_retention_duration=enforce_retention,
        )
        return len(deleted)


def _spark_schema(table: DeltaTable) -> StructType:
    return StructType.fromJson(json.loads(table.schema().to_json()))


def _product_properties(table: DeltaTable | None) -> dict[str, str]:
    if table is None:
        return {}
    return {k: v for k, v in table.metadata().configuration.items() if not k.startswith("delta.")}


def _same_definition(table: DeltaTable, schema: StructType, partition_by: list[str]) -> bool:
    return list(table.metadata().partition_columns) == partition_by and _spark_schema(table) == _nullable(
        schema
    )


def _landed(location: Path, actions: list[AddAction]) -> bool:
    """Whether a commit carrying `actions` is in the table now (another writer's commit is not)."""
    if not actions:
        return False
    try:
        current = DeltaTable(str(location))
    except Exception:  # no table yet, or one delta-rs cannot open: nothing of ours landed
        return False
    ours = str(location / unquote(actions[0].path))
    return any(local_file(uri) == ours for uri in current.file_uris())


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


def _unmatched(existing: DataFrame, df: DataFrame, keys: list[str]) -> DataFrame:
    """`existing`'s rows that no row of `df` matches on `keys`, a null matching a null (as delta-spark's
    MERGE condition `<=>` does): the rows a merge of `df` keeps."""
    incoming = df.select(*(F.col(k).alias(f"_incoming_{k}") for k in keys))
    matches = [existing[k].eqNullSafe(incoming[f"_incoming_{k}"]) for k in keys]
    return existing.join(incoming, matches, "left_anti")
