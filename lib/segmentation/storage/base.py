"""The table API every stage uses, whichever Delta engine is underneath (DESIGN.md §4)."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, DataType, MapType, StructType, TimestampNTZType

from segmentation.config import StorageConfig
from segmentation.errors import ConcurrentWriteError, StorageError
from segmentation.tables import ALL_TABLES, check_table_name

log = logging.getLogger(__name__)

Txn = tuple[str, int]
"""An idempotent-write token (app id, version): a write whose token the table has seen is skipped."""

# A merge into a table partitioned by one of its keys names the partitions its rows fall in, so that it
# reads and conflicts with only those: pipeline_runs gains a partition per run and per stream
# micro-batch, and a stage record that scanned them all took 5.7 s at 3000 runs here, 2.6 s named (2.2 s
# either way at 8 runs). Past this many the literal list costs more than it saves.
MERGE_PARTITIONS_NAMED = 1000

# The interop profile of every product table, set explicitly when a table is created (both engines)
# rather than left to an engine's or a platform's defaults: tables stay readable by delta-rs, Polars,
# DuckDB and plain parquet readers.
TABLE_PROPERTIES = {
    # A deletion vector hides rows of a file without rewriting it; readers that ignore them (or read
    # files directly, as the training feeders do) would see deleted rows.
    "delta.enableDeletionVectors": "false",
    # Physical column names equal logical ones, so a parquet file is readable without the Delta log.
    "delta.columnMapping.mode": "none",
    # Single-file v1 checkpoints; v2 checkpoints are a reader feature older readers refuse.
    "delta.checkpointPolicy": "classic",
}


@dataclass(frozen=True)
class ReadPoint:
    """What a read-modify-write saw of a table: the version it read and the generation its kind of
    writer (`app_id`) had recorded there. A write guarded by it commits only when no other writer of
    that kind committed since: each guarded commit records generation + 1 as Delta's idempotent-write
    id (`txnAppId`/`txnVersion`, an app transaction in delta-rs), which both engines check inside the
    commit, so a writer that read an older generation is refused, never committed on top (a lost
    update). Writers that do not change rows (OPTIMIZE) leave the generation alone."""

    name: str
    app_id: str
    version: int | None
    """The table version read; None: the table did not exist."""
    generation: int

    @property
    def txn(self) -> Txn:
        return (self.app_id, self.generation + 1)


@dataclass(frozen=True)
class TableFiles:
    """One snapshot of a table as files: what a reader outside Spark (a training feeder) opens."""

    name: str
    version: int
    files: tuple[str, ...]
    """Local paths for local tables, URIs elsewhere; absolute, decoded, sorted."""
    rows: int | None
    """Rows in the snapshot from the log's file statistics; None where a file has none."""


class TableStore(ABC):
    """Read and write the product's Delta tables by name."""

    engine_name = "abstract"

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        self.spark = spark
        self.cfg = cfg

    # ------------------------------------------------------------ reading

    @abstractmethod
    def location(self, name: str) -> str:
        """The table's path or fully qualified catalog name."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def read(self, name: str, version: int | None = None) -> DataFrame:
        """The table's current snapshot (or the one at `version`: time travel) as a DataFrame; lazy."""

    @abstractmethod
    def version(self, name: str) -> int:
        """The table's current Delta version."""

    def read_point(self, name: str, app_id: str) -> ReadPoint:
        """The table's current version and `app_id`'s generation in it, from one snapshot: read the
        table at `version` and guard the write with the result."""
        if not self.exists(name):
            return ReadPoint(name, app_id, None, 0)
        version, generation = self._version_and_generation(name, app_id)
        return ReadPoint(name, app_id, version, generation)

    @abstractmethod
    def _version_and_generation(self, name: str, app_id: str) -> tuple[int, int]:
        """One snapshot's version and the app transaction version it records for `app_id` (0: none)."""

    def check_guard(self, guard: ReadPoint) -> None:
        """Refuse early (before any file is written) when another guarded writer has committed since
        the read; the commit itself checks again, atomically."""
        if guard.version is None:
            if self.exists(guard.name):
                raise guard_error(guard, "created the table")
            return
        _, generation = self._version_and_generation(guard.name, guard.app_id)
        if generation > guard.generation:
            raise guard_error(guard, f"committed generation {generation}")

    @abstractmethod
    def history(self, name: str, limit: int | None = None) -> list[dict]:
        """The table's commits, newest first: version, timestamp, operation (a small list)."""

    @abstractmethod
    def properties(self, name: str) -> dict[str, str]:
        """The table's properties (the Delta metadata configuration)."""

    @abstractmethod
    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        """Set table properties (a metadata-only commit); keys outside Delta's own `delta.*` are free
        for the product to record facts about a table in."""

    @abstractmethod
    def partition_columns(self, name: str) -> list[str]: ...

    @abstractmethod
    def protocol(self, name: str) -> tuple[int, int]:
        """(min reader version, min writer version)."""

    @abstractmethod
    def snapshot(self, name: str) -> TableFiles:
        """The current snapshot's data files, for readers that open them directly. Refuses a snapshot
        in which a file has a deletion vector: reading that file whole would bring deleted rows back."""

    # ------------------------------------------------------------ writing

    @abstractmethod
    def overwrite(
        self,
        df: DataFrame,
        name: str,
        partition_by: list[str] | None = None,
        guard: ReadPoint | None = None,
    ) -> None:
        """Replace the whole table (schema included) with `df`, atomically. With `guard`, only when no
        other writer of its kind committed since the guard's read (else ConcurrentWriteError, and
        nothing is committed)."""

    def replace_where(
        self, df: DataFrame, name: str, column: str, values: Sequence, guard: ReadPoint | None = None
    ) -> None:
        """Replace, in one commit, every row whose partition `column` is one of `values` by `df`'s rows
        (which must all lie in `values`); the other partitions stay as they are. Creates the table,
        partitioned by `column`, when it does not exist. `guard` as for `overwrite`."""
        refuse_timestamp_ntz(df.schema, name)
        if guard is not None and guard.name != name:
            raise StorageError(f"a read point of table {guard.name} cannot guard a write to {name}")
        absent = guard.version is None if guard is not None else not self.exists(name)
        if absent:
            self.overwrite(df, name, [column], guard=guard)
        elif not values:
            log.info("table %s: no partitions to replace", name)
        else:
            self._replace_where(df, name, column, list(values), guard)

    @abstractmethod
    def _replace_where(
        self, df: DataFrame, name: str, column: str, values: list, guard: ReadPoint | None
    ) -> None:
        """`replace_where` on an existing table, with at least one value."""

    @abstractmethod
    def append(
        self, df: DataFrame, name: str, partition_by: list[str] | None = None, txn: Txn | None = None
    ) -> bool:
        """Add `df`'s rows. Refuses a schema that differs from the table's. Returns False when `txn`
        was already committed (the write is skipped), True otherwise."""

    def merge(
        self, df: DataFrame, name: str, keys: Sequence[str], partition_by: list[str] | None = None
    ) -> None:
        """Upsert: a row of `df` replaces the table's row with the same `keys`, or is inserted. Creates
        the table (partitioned by `partition_by`) when it does not exist."""
        refuse_timestamp_ntz(df.schema, name)
        if not self.exists(name):
            self.overwrite(df, name, partition_by)
            return
        if check_write_schema(self.read(name).schema, df.schema, name):
            raise StorageError(f"table {name}: merge does not add columns; write them with append first")
        self._merge(df, name, list(keys))

    @abstractmethod
    def _merge(self, df: DataFrame, name: str, keys: list[str]) -> None:
        """`merge` into an existing table of the same schema."""

    @staticmethod
    def _merged_partitions(df: DataFrame, parts: list[str], keys: list[str]) -> tuple[str, list] | None:
        """The partitions a merge of `df` can change in a table partitioned by `parts`: the partition
        column when it is the only one and a merge key, with the values `df` holds there. None when
        the table is partitioned otherwise, or `df` holds a null there or more than
        MERGE_PARTITIONS_NAMED values (then the merge considers the whole table)."""
        if len(parts) != 1 or parts[0] not in keys:
            return None
        column = parts[0]
        rows = df.select(column).distinct().limit(MERGE_PARTITIONS_NAMED + 1).collect()  # partitions
        values = [r[0] for r in rows]
        if len(values) > MERGE_PARTITIONS_NAMED or None in values:
            return None
        return column, values

    # ------------------------------------------------------------ maintenance

    @abstractmethod
    def optimize(self, name: str) -> dict[str, int]:
        """Compact small files into larger ones (a commit that changes no row): files removed, added."""

    @abstractmethod
    def vacuum(self, name: str, retain_hours: float, enforce_retention: bool = True) -> int:
        """Delete files no version younger than `retain_hours` needs; returns how many were deleted."""

    def purge_deletion_vectors(self, name: str) -> int:
        """Rewrite the files that carry deletion vectors; returns how many had one (0: nothing done)."""
        return 0

    # ------------------------------------------------------------ shared

    def read_or_fail(self, name: str, needed_by: str) -> DataFrame:
        """Read an upstream table, or say which stage must run first."""
        if not self.exists(name):
            raise StorageError(
                f"table {name} does not exist at {self.location(name)}: run the stage that writes it "
                f"before '{needed_by}'"
            )
        return self.read(name)

    def catalog_name(self, name: str) -> str | None:
        """The table's full name in a catalog (catalog.schema.table), or None for a path-based lake."""
        return None

    def register_views(self) -> list[str]:
        """Make every existing product table queryable in Spark SQL by its plain name."""
        registered = []
        for name in ALL_TABLES:
            if self.exists(name):
                self.read(name).createOrReplaceTempView(name)
                registered.append(name)
        return registered

    @staticmethod
    def _check_name(name: str) -> str:
        return check_table_name(name)


def schemas_match(left: StructType, right: StructType) -> bool:
    """Same column names, order and types; nullability is ignored (parquet files are all nullable)."""
    return _shape(left) == _shape(right)


def _shape(tp: DataType) -> object:
    if isinstance(tp, StructType):
        return tuple((f.name, _shape(f.dataType)) for f in tp.fields)
    if isinstance(tp, ArrayType):
        return ("array", _shape(tp.elementType))
    if isinstance(tp, MapType):
        return ("map", _shape(tp.keyType), _shape(tp.valueType))
    return tp.simpleString()


def adds_columns(table: StructType, incoming: StructType) -> bool:
    """True when `incoming` is the table's schema with new columns after the existing ones: the
    additive change Delta's schema evolution (mergeSchema) accepts; old rows read the new columns
    as null."""
    n = len(table.fields)
    return len(incoming.fields) > n and schemas_match(table, StructType(incoming.fields[:n]))


def check_write_schema(table: StructType, incoming: StructType, name: str) -> bool:
    """For writes that keep the table (append, replace, merge): the same schema, or the table's with
    new trailing columns (returns True: the write evolves the schema). Anything else is refused."""
    if schemas_match(table, incoming):
        return False
    if adds_columns(table, incoming):
        return True
    raise StorageError(f"schema mismatch writing to {name}: {describe_mismatch(table, incoming)}")


def describe_mismatch(table: StructType, incoming: StructType) -> str:
    """One line naming the first difference between a table's schema and an incoming one."""
    table_cols = {f.name: _shape(f.dataType) for f in table.fields}
    incoming_cols = {f.name: _shape(f.dataType) for f in incoming.fields}
    missing = [c for c in table_cols if c not in incoming_cols]
    extra = [c for c in incoming_cols if c not in table_cols]
    changed = [
        f"{c} ({table[c].dataType.simpleString()} -> {incoming[c].dataType.simpleString()})"
        for c in table_cols
        if c in incoming_cols and table_cols[c] != incoming_cols[c]
    ]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"unexpected columns {extra}")
    if changed:
        parts.append(f"changed types {changed}")
    if not parts:
        parts.append("column order differs")
    return "; ".join(parts)


def refuse_timestamp_ntz(schema: StructType, name: str) -> None:
    """Naive timestamps would make the table timestamp_ntz (reader v3), unreadable by older readers."""

    def has_ntz(tp: DataType) -> bool:
        if isinstance(tp, TimestampNTZType):
            return True
        if isinstance(tp, StructType):
            return any(has_ntz(f.dataType) for f in tp.fields)
        if isinstance(tp, ArrayType):
            return has_ntz(tp.elementType)
        if isinstance(tp, MapType):
            return has_ntz(tp.keyType) or has_ntz(tp.valueType)
        return False

    bad = [f.name for f in schema.fields if has_ntz(f.dataType)]
    if bad:
        raise StorageError(f"table {name}: columns {bad} are timestamp_ntz; write UTC timestamps instead")


def partition_string(value: object) -> str | None:
    """A partition value as Delta's log spells it (dates as YYYY-MM-DD)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise StorageError("timestamp partition values are not supported; partition by a date or string")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def sql_double(value: float) -> str:
    """A float as an exact Spark SQL double literal: repr round-trips, and the D suffix makes it a
    double where a bare 0.1 is a decimal; NaN and the infinities have no literal, so they are cast."""
    value = float(value)
    if math.isnan(value):
        return "cast('NaN' as double)"
    if math.isinf(value):
        return f"cast('{'-' if value < 0 else ''}Infinity' as double)"
    return f"{value!r}D"


def sql_literal(value: object) -> str:
    """A partition value as a Spark SQL literal (for predicates such as replaceWhere)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, float):
        return sql_double(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, dt.datetime):
        raise StorageError("timestamp partition values are not supported; partition by a date or string")
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def local_file(uri: str) -> str:
    """A data file's URI as a reader opens it: a plain decoded path for local files, else the URI."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path)
    return uri


def deletion_vector_error(name: str, files: Iterable[str]) -> StorageError:
    listed = list(files)
    return StorageError(
        f"table {name}: {len(listed)} data files carry deletion vectors (e.g. {listed[0]}); reading them "
        "directly would bring deleted rows back. Run `segment maintain`, which purges them "
        "(REORG TABLE ... APPLY (PURGE)), or set delta.enableDeletionVectors=false on the table"
    )


_CONFLICT = re.compile(
    r"Concurrent\w*Exception|\w+ChangedException|\[DELTA_[A-Z_]+\]|CommitFailed|concurrent"
)


def is_concurrent_commit_error(exc: BaseException) -> bool:
    """Another writer committed to the table first, and Delta refused to commit on top of it."""
    text = f"{type(exc).__name__} {exc}"
    return any(
        marker in text
        for marker in (
            # delta-spark: io.delta.exceptions.Concurrent{Append,DeleteRead,DeleteDelete,Transaction,
            # Write}Exception, MetadataChangedException, ProtocolChangedException, and their error classes
            "io.delta.exceptions.",
            "DELTA_CONCURRENT",
            "DELTA_METADATA_CHANGED",
            "DELTA_PROTOCOL_CHANGED",
            "CommitFailedError",  # delta-rs
        )
    )


def concurrent_write_error(name: str, exc: BaseException) -> ConcurrentWriteError:
    lines = str(exc).strip().splitlines() or [""]
    # py4j's first line says only which call failed; the line naming Delta's exception says why.
    first = next((line for line in lines if _CONFLICT.search(line)), lines[0]).strip()[:300]
    return ConcurrentWriteError(
        f"table {name}: another writer committed first and this write conflicts with it, so nothing of "
        f"it was committed; run the stage again ({type(exc).__name__}: {first})"
    )


def guard_error(guard: ReadPoint, what: str) -> ConcurrentWriteError:
    read = "before the table existed" if guard.version is None else f"at version {guard.version}"
    return ConcurrentWriteError(
        f"table {guard.name}: another {guard.app_id} writer {what} after this one read the table "
        f"({read}), so nothing of this write was committed; run it again"
    )
