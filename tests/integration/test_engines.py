"""Every product table, as the pipeline wrote it, across engines and readers (DESIGN.md §4): written by
either Delta engine and read by the other with identical rows; readable by Polars and DuckDB; with the
interop profile set; time travel and history in `segment sql`; upkeep by `segment maintain`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.cli import main
from segmentation.registry import pipeline_tables
from segmentation.storage import TABLE_PROPERTIES, DeltaRsStore, DeltaSparkStore

pytestmark = pytest.mark.slow


def canonical(df: DataFrame) -> DataFrame:
    """Rows as JSON text, so frames with arrays and maps compare as multisets."""
    return df.select(F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias("row"))


def assert_same_rows(left: DataFrame, right: DataFrame, table: str) -> None:
    assert left.schema.simpleString() == right.schema.simpleString(), table
    a, b = canonical(left), canonical(right)
    assert a.count() == b.count(), table
    assert a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0, table


@pytest.fixture(scope="module")
def stores(spark, lake):
    spark_store = DeltaSparkStore(spark, lake.cfg.storage)
    rs_store = DeltaRsStore(spark, lake.cfg.storage)
    return spark_store, rs_store


@pytest.fixture(scope="module")
def rs_copy(spark, lake, stores, tmp_path_factory):
    """Every product table rewritten by delta-rs into a second lake, partitioned as the original."""
    spark_store, _ = stores
    root = tmp_path_factory.mktemp("rs_lake")
    copy = DeltaRsStore(spark, replace(lake.cfg.storage, root=str(root)))
    for name in pipeline_tables():
        copy.overwrite(spark_store.read(name), name, spark_store.partition_columns(name))
    return copy


def test_the_pipeline_wrote_every_table_with_delta_spark(spark, lake, stores):
    spark_store, _ = stores
    for name in pipeline_tables():
        history = spark_store.history(name)
        assert history, name
        # delta-spark's own operations are in the log: WRITE, MERGE (pipeline_runs), ...
        assert {h["operation"] for h in history} & {"WRITE", "MERGE", "CREATE OR REPLACE TABLE AS SELECT"}, (
            name
        )


def test_delta_rs_reads_every_table_delta_spark_wrote(spark, stores):
    spark_store, rs_store = stores
    for name in pipeline_tables():
        assert_same_rows(spark_store.read(name), rs_store.read(name), name)


def test_delta_spark_reads_every_table_delta_rs_wrote(spark, lake, stores, rs_copy):
    spark_store, _ = stores
    delta_spark_reader = DeltaSparkStore(spark, rs_copy.cfg)
    for name in pipeline_tables():
        assert_same_rows(spark_store.read(name), delta_spark_reader.read(name), name)
        assert delta_spark_reader.partition_columns(name) == spark_store.partition_columns(name), name


def test_every_table_has_the_interop_profile(stores, rs_copy):
    spark_store, _ = stores
    for store in (spark_store, rs_copy):
        for name in pipeline_tables():
            properties = store.properties(name)
            assert {k: properties.get(k) for k in TABLE_PROPERTIES} == TABLE_PROPERTIES, (store, name)
            assert store.protocol(name) == (1, 2), (store.engine_name, name)


def test_polars_and_duckdb_read_every_table_of_both_engines(spark, stores, rs_copy):
    import duckdb
    import polars as pl

    spark_store, _ = stores
    con = duckdb.connect()
    con.execute(f"LOAD '{_duckdb_delta_extension()}'")
    for store in (spark_store, rs_copy):
        for name in pipeline_tables():
            expected = spark_store.read(name)
            n = expected.count()
            frame = pl.read_delta(store.location(name))
            assert frame.height == n and sorted(frame.columns) == sorted(expected.columns), name
            counted = con.execute(f"SELECT count(*) FROM delta_scan('{store.location(name)}')").fetchone()[0]
            assert counted == n, (store.engine_name, name)
    # The instants agree: DuckDB reads silver's event times as UTC instants.
    latest = spark_store.read("events_silver").agg(F.max(F.unix_micros("event_time"))).head()[0]
    duck = con.execute(
        f"SELECT max(epoch_us(event_time)) FROM delta_scan('{spark_store.location('events_silver')}')"
    ).fetchone()[0]
    assert duck == latest


def _duckdb_delta_extension() -> str:
    from pathlib import Path

    import duckdb
    import duckdb_extension_delta

    found = sorted(Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
    assert found, "duckdb-extension-delta ships no extension file"
    version = f"v{duckdb.__version__}"
    return str(next((f for f in found if f.parent.name == version), found[-1]))


def test_time_travel_and_history_in_segment_sql(spark, lake, stores, capsys):
    spark_store, _ = stores
    version = spark_store.version("pipeline_runs")
    assert version >= 5  # two commits per stage
    first = "SELECT count(*) AS n FROM pipeline_runs VERSION AS OF 0"
    assert main(["sql", *lake.args, "--format", "json", first]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"n": 1}  # the first stage's row, then
    assert main(["sql", *lake.args, "--format", "json", "DESCRIBE HISTORY pipeline_runs"]) == 0
    history = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["version"] for h in history] == list(range(version, -1, -1))
    # each stage appends its `running` row (the first append creates the table) and upserts its end
    stages = spark_store.read("pipeline_runs").count()
    assert Counter(h["operation"] for h in history) == {"WRITE": stages, "MERGE": stages}


def test_maintain_compacts_and_vacuums_without_changing_a_row(spark, lake, stores, capsys):
    spark_store, _ = stores
    before = {name: canonical(spark_store.read(name)).cache() for name in pipeline_tables()}
    counts = {name: frame.count() for name, frame in before.items()}  # materialized now, before maintain
    versions = {name: spark_store.version(name) for name in pipeline_tables()}
    files = {name: len(spark_store.snapshot(name).files) for name in pipeline_tables()}
    try:
        assert main(["maintain", *lake.args]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["rows_in"] == summary["rows_out"] > 0
        for name in pipeline_tables():
            after = canonical(spark_store.read(name))
            assert before[name].exceptAll(after).count() == 0, name
            # pipeline_runs gains maintain's own row; no other table gains or loses one.
            assert after.count() == counts[name] + (1 if name == "pipeline_runs" else 0), name
            assert len(spark_store.snapshot(name).files) <= files[name], name
            # The week's retention keeps earlier versions readable.
            assert spark_store.read(name, version=versions[name]).count() == counts[name], name
        silver_files = len(spark_store.snapshot("events_silver").files)
        partitions = spark_store.read("events_silver").select("event_date").distinct().count()
        assert silver_files <= max(files["events_silver"], partitions)
        runs = spark_store.read("pipeline_runs").where("stage = 'maintain' AND status = 'success'")
        details = json.loads(runs.head().details)
        assert details["engine"] == "delta-spark" and set(details["tables"]) == set(pipeline_tables())
    finally:
        for frame in before.values():
            frame.unpersist()
