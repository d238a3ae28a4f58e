"""Readers: any supported raw format → one row per input record.

Every reader returns the same shape, so cleaning never knows the format:
- `raw_record`: the record as read (the line for json and text; a JSON rendering of the row for csv
  and parquet, or the raw line Spark could not parse),
- `source_file`,
- `rec`: a struct of the parsed source fields (null when the record could not be parsed),
- `parse_error`: null, or the reason the record could not be parsed (`malformed_record`,
  `pattern_mismatch`).
Paths may be a file, a directory (read recursively; `key=value` partition directories become columns
for csv and parquet) or a glob.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from pathlib import Path

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from segmentation.config import InputConfig
from segmentation.errors import ConfigError, InputError, one_line
from segmentation.spark import is_connect

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
UNDECODABLE = "_undecodable"
_PARTITION_DIR = re.compile(r"^[^=/]+=[^/]*$")


def read_raw(
    spark: SparkSession, cfg: InputConfig, files: list[str] | None = None, scratch: Path | None = None
) -> DataFrame:
    """Read `files` (default: everything under `cfg.path`) in `cfg.format`. `scratch`: a directory
    both this process and Spark can write, which a Spark Connect session needs for a JSON batch whose
    schema must be inferred from some of its lines.
    Output columns: raw_record, source_file, rec, parse_error."""
    if cfg.format == "json":
        return _read_json_lines(spark, cfg, files or [cfg.path], scratch)
    readers = {"csv": _read_csv, "parquet": _read_parquet, "text": _read_text}
    return readers[cfg.format](spark, cfg, files or [cfg.path])


def normalize_file(uri: str) -> str:
    """One spelling per file: Spark writes `file:/x` in some places and `file:///x` in others."""
    return "file:/" + uri[len("file:///") :] if uri.startswith("file:///") else uri


def normalized_file(column: Column) -> Column:
    """`normalize_file` as a column expression, for comparing recorded file names with a listing."""
    return F.regexp_replace(column, "^file:///", "file:/")


def list_input_files(spark: SparkSession, cfg: InputConfig) -> list[str]:
    """Every data file under `cfg.path` (a driver-side listing of names, no data is read)."""
    listing = spark.read.option("recursiveFileLookup", "true").text(cfg.path)
    return sorted({normalize_file(f) for f in listing.inputFiles()})


def _options(cfg: InputConfig) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in cfg.options.items()}


def _source_file() -> F.Column:
    return F.col("_metadata.file_path").alias("source_file")


def _has_partition_dirs(path: str) -> bool:
    """True for a local directory laid out as key=value subdirectories (Hive partitions)."""
    root = Path(path)
    return root.is_dir() and any(p.is_dir() and _PARTITION_DIR.match(p.name) for p in root.iterdir())


def _files_reader(spark: SparkSession, cfg: InputConfig) -> DataFrameReader:
    """A reader that finds every file under the path: partition discovery when the layout is
    key=value directories (basePath keeps it working when reading single files), recursive listing
    otherwise."""
    reader = spark.read.options(**_options(cfg))
    if _has_partition_dirs(cfg.path):
        return reader.option("basePath", cfg.path)
    return reader.option("recursiveFileLookup", "true")


def _lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """Every line of every file (gzip too): blank and malformed lines are records as well. Lines are
    kept as valid UTF-8 (bytes that are not become U+FFFD, so every table stays readable by every
    reader); `_undecodable` says which had such bytes."""
    value = F.col("value")
    return (
        spark.read.option("recursiveFileLookup", "true")
        .text(files)
        .select(
            F.make_valid_utf8(value).alias("raw_record"),
            _source_file(),
            F.coalesce(~F.is_valid_utf8(value), F.lit(False)).alias(UNDECODABLE),
        )
    )


def _read_json_lines(
    spark: SparkSession, cfg: InputConfig, files: list[str], scratch: Path | None = None
) -> DataFrame:
    """One JSON object per line. A line that is not one, repeats a key (which value would count is
    undefined) or holds bytes that are not UTF-8 is a record to quarantine; a batch in which no line
    at all is a JSON object is an input error naming its files."""
    lines = _lines(spark, files)
    keys = F.json_object_keys("raw_record")
    repeated_key = F.coalesce(
        F.size(F.array_distinct(F.transform(keys, F.lower))) < F.size(keys), F.lit(False)
    )
    inferred = _infer_json(spark, cfg, files, lines, repeated_key, scratch)
    fields = _first_of_each_name(f for f in inferred if f.name != CORRUPT)
    if not fields and not lines.isEmpty():
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise InputError(f"input.format is json but no line of {shown} is a JSON object")
    schema = StructType([*fields, StructField(CORRUPT, StringType())])
    parsed = F.from_json("raw_record", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    ok = parsed.isNotNull() & parsed[CORRUPT].isNull() & ~repeated_key
    return lines.select(
        "raw_record",
        "source_file",
        F.when(ok & ~undecodable(lines), parsed.dropFields(CORRUPT)).alias("rec"),
        parse_error(lines, ok, "malformed_record"),
    )


def _infer_json(
    spark: SparkSession,
    cfg: InputConfig,
    files: list[str],
    lines: DataFrame,
    repeated_key: Column,
    scratch: Path | None = None,
) -> list[StructField]:
    """The fields of the batch's JSON objects, inferred by Spark's JSON reader from the files. Its
    inference refuses a batch in which a record repeats a key (the key becomes two columns); then it
    infers again from the other lines, which pass through Python once (only in that case). A Spark
    Connect client cannot hand lines to the reader: there they are written under `scratch` and read
    back as files."""
    reader = spark.read.options(**_options(cfg))
    try:
        return list(reader.option("recursiveFileLookup", "true").json(files).schema.fields)
    except AnalysisException as exc:
        if "COLUMN_ALREADY_EXISTS" not in str(exc):
            raise
    log.warning("ingest: a record repeats a JSON key (quarantined); inferring the schema from the others")
    others = lines.where(~repeated_key).select("raw_record")
    if not is_connect(spark):
        return list(reader.json(others.rdd.map(lambda row: row[0])).schema.fields)
    if scratch is None:
        raise InputError(
            "a JSON record repeats a key, and this Spark Connect session has no scratch directory"
        )
    target = scratch / f"json-inference-{uuid.uuid4().hex}"
    others.write.text(str(target))
    try:
        return list(reader.json(str(target)).schema.fields)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def undecodable(raw: DataFrame) -> Column:
    """Records with bytes that are not UTF-8: flagged by `_lines`, or (CSV, decoded by Java) holding
    the U+FFFD Java puts in their place."""
    if UNDECODABLE in raw.columns:
        return F.col(UNDECODABLE)
    return F.coalesce(F.col("raw_record").contains("\ufffd"), F.lit(False))


def parse_error(raw: DataFrame, ok: Column, reason: str) -> Column:
    """`invalid_encoding` for records with undecodable bytes, else `reason` where not `ok`."""
    return (
        F.when(undecodable(raw), F.lit("invalid_encoding"))
        .when(~ok, F.lit(reason))
        .otherwise(F.lit(None).cast("string"))
        .alias("parse_error")
    )


def _first_of_each_name(fields) -> list[StructField]:
    """Inference lists a key twice when records repeat it (or spell it in two cases); keep the first."""
    kept: dict[str, StructField] = {}
    for f in fields:
        kept.setdefault(f.name.lower(), f)
    return list(kept.values())


def _read_csv(spark: SparkSession, cfg: InputConfig, files: list[str]) -> DataFrame:
    """CSV with `input.options` (header, sep, quote, …). Columns are read as strings and typed later,
    so a bad value quarantines one record instead of failing the read."""
    header = _files_reader(spark, cfg).option("inferSchema", "false").csv(files).schema
    data_fields = [StructField(f.name, StringType()) for f in header.fields if f.name != CORRUPT]
    schema = StructType([*data_fields, StructField(CORRUPT, StringType())])
    rows = (
        _files_reader(spark, cfg)
        .schema(schema)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv(files)
    )
    partition_cols = [c for c in rows.columns if c not in schema.fieldNames()]
    record = F.struct(*[F.col(f"`{c}`") for c in [f.name for f in data_fields] + partition_cols])
    bad = F.col(CORRUPT).isNotNull()
    framed = rows.select(
        F.when(bad, F.col(CORRUPT)).otherwise(F.to_json(record)).alias("raw_record"),
        _source_file(),
        record.alias("rec"),
        bad.alias("bad"),
    )
    return framed.select(
        "raw_record",
        "source_file",
        F.when(~F.col("bad") & ~undecodable(framed), F.col("rec")).alias("rec"),
        parse_error(framed, ~F.col("bad"), "malformed_record"),
    )


def _read_parquet(spark: SparkSession, cfg: InputConfig, files: list[str]) -> DataFrame:
    rows = _files_reader(spark, cfg).parquet(*files)
    record = F.struct(*[F.col(f"`{c}`") for c in rows.columns])
    return rows.select(
        F.to_json(record).alias("raw_record"),
        _source_file(),
        record.alias("rec"),
        F.lit(None).cast("string").alias("parse_error"),
    )


_GROUP_NAME = re.compile(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>")


def named_groups(pattern: str) -> tuple[list[tuple[str, int]], str]:
    """The (name, group number) of each named group, and the pattern with those groups made plain.

    Groups are numbered as Java numbers them (every capturing group, named or not, by the position of
    its opening parenthesis), so values can be extracted by number. Plain groups let names carry
    underscores (`event_time`), which Java group names cannot.
    """
    groups: list[tuple[str, int]] = []
    plain: list[str] = []
    number = 0
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            plain.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            match = _GROUP_NAME.match(pattern, i)
            if match:
                number += 1
                groups.append((match.group(1), number))
                plain.append("(")
                i = match.end()
                continue
            if not pattern.startswith("(?", i):
                number += 1
        plain.append(ch)
        i += 1
    return groups, "".join(plain)


def check_java_regex(spark: SparkSession, pattern: str, key: str) -> None:
    """Validate a regular expression by the engine that will run it: Spark compiles it as a Java regex
    (Python's `re` refuses valid Java such as `\\p{L}` and accepts some Java refuses)."""
    try:
        spark.range(1).select(F.lit("").rlike(pattern)).collect()
    except Exception as exc:  # Spark raises its own error types for a bad pattern
        reason = one_line(exc).split(": ", 1)[-1]
        raise ConfigError(f"{key} is not a valid Java regular expression: {reason}") from None


def _read_text(spark: SparkSession, cfg: InputConfig, files: list[str]) -> DataFrame:
    """Plain text read with `input.pattern`: named groups become columns; a line that does not match
    (a header line too) is a `pattern_mismatch`."""
    groups, pattern = named_groups(cfg.pattern or "")
    check_java_regex(spark, pattern, "input.pattern")
    if not groups:
        raise ConfigError("input.pattern has no named groups (?<name>...): nothing would become a column")
    lines = _lines(spark, files)
    matched = F.col("raw_record").rlike(pattern)
    record = F.struct(
        *[
            F.when(
                F.regexp_extract("raw_record", pattern, number) != "",
                F.regexp_extract("raw_record", pattern, number),
            ).alias(name)
            for name, number in groups
        ]
    )
    return lines.select(
        "raw_record",
        "source_file",
        F.when(matched & ~undecodable(lines), record).alias("rec"),
        parse_error(lines, matched, "pattern_mismatch"),
    )
