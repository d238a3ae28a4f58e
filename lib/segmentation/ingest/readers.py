"""Readers: any supported raw format → one row per input record.

Every reader returns the same shape, so cleaning never knows the format:
`raw_record` (the record as read: the line for line-based formats, a JSON rendering otherwise),
`source_file`, and `rec` (a struct of the parsed source fields, null when the record could not be
parsed, with `_corrupt_record` set when it was only partly parsed).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from segmentation.config import InputConfig
from segmentation.errors import ConfigError

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"


def read_raw(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """Read `cfg.path` in `cfg.format`. Output columns: raw_record, source_file, rec."""
    readers = {"json": _read_json_lines}
    reader = readers.get(cfg.format)
    if reader is None:
        raise ConfigError(
            f"input.format {cfg.format!r} is not supported yet by ingest; supported: {sorted(readers)}"
        )
    return reader(spark, cfg)


def _options(cfg: InputConfig) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in cfg.options.items()}


def _read_json_lines(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """JSON lines (gzip too): every line is a record, blank and malformed lines included."""
    lines = (
        spark.read.option("recursiveFileLookup", "true")
        .text(cfg.path)
        .select(F.col("value").alias("raw_record"), F.col("_metadata.file_path").alias("source_file"))
    )
    inferred = spark.read.options(**_options(cfg)).option("recursiveFileLookup", "true").json(cfg.path).schema
    fields = [f for f in inferred.fields if f.name != CORRUPT]
    if not fields:
        raise ConfigError(f"input.path {cfg.path}: no JSON records found")
    schema = StructType([*fields, StructField(CORRUPT, StringType())])
    parsed = F.from_json("raw_record", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    return lines.withColumn("rec", parsed)
