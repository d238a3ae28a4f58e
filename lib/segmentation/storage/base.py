"""The table API every stage uses, whichever Delta engine is underneath (DESIGN.md §4)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, DataType, MapType, StructType, TimestampNTZType

from segmentation.config import StorageConfig
from segmentation.errors import StorageError
from segmentation.storage.names import ALL_TABLES, check_table_name

log = logging.getLogger(__name__)

Txn = tuple[str, int]
"""An idempotent-write token (app id, version): a write whose token the table has seen is skipped."""


class TableStore(ABC):
    """Read and write the product's Delta tables by name."""

    engine_name = "abstract"

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        self.spark = spark
        self.cfg = cfg

    @abstractmethod
    def location(self, name: str) -> str:
        """The table's path or fully qualified catalog name."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def read(self, name: str) -> DataFrame:
        """The table's current snapshot as a DataFrame (lazy; nothing is collected)."""

    @abstractmethod
    def overwrite(self, df: DataFrame, name: str, partition_by: list[str] | None = None) -> None:
        """Replace the whole table (schema included) with `df`, atomically."""

    @abstractmethod
    def overwrite_partitions(self, df: DataFrame, name: str, partition_by: list[str]) -> None:
        """Replace the rows of exactly the partitions that `df` has rows for; others stay as they are."""

    @abstractmethod
    def append(
        self, df: DataFrame, name: str, partition_by: list[str] | None = None, txn: Txn | None = None
    ) -> bool:
        """Add `df`'s rows. Refuses a schema that differs from the table's. Returns False when `txn`
        was already committed (the write is skipped), True otherwise."""

    @abstractmethod
    def version(self, name: str) -> int:
        """The table's current Delta version."""

    def read_or_fail(self, name: str, needed_by: str) -> DataFrame:
        """Read an upstream table, or say which stage must run first."""
        if not self.exists(name):
            raise StorageError(
                f"table {name} does not exist at {self.location(name)}: run the stage that writes it "
                f"before '{needed_by}'"
            )
        return self.read(name)

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
