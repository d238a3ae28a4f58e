"""The delta-rs engine on real Delta tables (DESIGN.md §4)."""

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from segmentation.errors import StorageError
from segmentation.storage import DeltaRsStore, open_store
from segmentation.storage.delta_spark import DeltaSparkStore

UTC = dt.UTC
SCHEMA = (
    "user_id string, event_time timestamp, event_date date, value double, quantity long, n int, "
    "is_bot boolean, features array<float>, tags map<string,string>"
)


def rows():
    return [
        (
            "u1",
            dt.datetime(2026, 9, 1, 23, 59, 59, 123456, tzinfo=UTC),
            dt.date(2026, 9, 1),
            1.5,
            3,
            7,
            False,
            [0.25, -1.5],
            {"a": "b"},
        ),
        (
            "u2",
            dt.datetime(2026, 9, 2, 0, 0, 1, tzinfo=UTC),
            dt.date(2026, 9, 2),
            None,
            None,
            None,
            True,
            [],
            None,
        ),
        ("u3", dt.datetime(2026, 9, 3, 12, 0, tzinfo=UTC), dt.date(2026, 9, 3), -2.0, 0, 1, None, None, {}),
    ]


@pytest.fixture
def store(spark, cfg):
    return open_store(spark, cfg.storage)


def test_auto_engine_is_delta_rs_without_the_jars(store):
    assert isinstance(store, DeltaRsStore)


def test_round_trip_of_every_column_type(spark, store):
    original = spark.createDataFrame(rows(), SCHEMA)
    store.overwrite(original, "t", ["event_date"])
    back = store.read("t")
    assert back.schema.simpleString() == original.schema.simpleString()
    assert sorted(back.collect()) == sorted(original.collect())
    # The instant survives: 23:59:59.123456 UTC is still that, as epoch microseconds.
    micros = back.where("user_id = 'u1'").select(F.unix_micros("event_time")).head()[0]
    assert micros == int(dt.datetime(2026, 9, 1, 23, 59, 59, 123456, tzinfo=UTC).timestamp() * 1_000_000)


def test_timestamps_stay_utc_whatever_the_session_zone(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        micros = store.read("t").where("user_id = 'u3'").select(F.unix_micros("event_time")).head()[0]
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert micros == int(dt.datetime(2026, 9, 3, 12, tzinfo=UTC).timestamp() * 1_000_000)


def test_partition_overwrite_replaces_only_those_partitions(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    replacement = spark.createDataFrame(
        [("u9", dt.datetime(2026, 9, 2, 8, tzinfo=UTC), dt.date(2026, 9, 2), 9.0, 1, 1, False, [1.0], None)],
        SCHEMA,
    )
    store.overwrite_partitions(replacement, "t", ["event_date"])
    got = sorted((r.event_date.isoformat(), r.user_id) for r in store.read("t").collect())
    assert got == [("2026-09-01", "u1"), ("2026-09-02", "u9"), ("2026-09-03", "u3")]


def test_failure_before_commit_leaves_table_unchanged(spark, store, monkeypatch):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    version = store.version("t")
    before = sorted(store.read("t").collect())
    files_before = {p for p in Path(store.location("t")).rglob("*.parquet")}

    def crash(*args, **kwargs):
        raise OSError("simulated crash between writing files and committing")

    monkeypatch.setattr(DeltaRsStore, "_commit", crash)
    more = spark.createDataFrame(rows(), SCHEMA).withColumn("user_id", F.lit("new"))
    for write in (
        lambda: store.append(more, "t", ["event_date"]),
        lambda: store.overwrite(more, "t", ["event_date"]),
        lambda: store.overwrite_partitions(more, "t", ["event_date"]),
    ):
        with pytest.raises(StorageError, match="table unchanged"):
            write()
    monkeypatch.undo()
    assert store.version("t") == version
    assert sorted(store.read("t").collect()) == before
    # The uncommitted files were cleaned up; no staging directory is left behind either.
    assert {p for p in Path(store.location("t")).rglob("*.parquet")} == files_before
    assert not [p for p in Path(store.location("t")).iterdir() if p.name.startswith("_staging")]


def test_append_with_mismatched_schema_is_refused(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    version = store.version("t")
    renamed = spark.createDataFrame(rows(), SCHEMA).withColumnRenamed("value", "amount")
    with pytest.raises(StorageError, match=r"schema mismatch writing to t: missing columns \['value'\]"):
        store.append(renamed, "t", ["event_date"])
    retyped = spark.createDataFrame(rows(), SCHEMA).withColumn("n", F.col("n").cast("string"))
    with pytest.raises(StorageError, match=r"changed types \['n \(int -> string\)'\]"):
        store.append(retyped, "t", ["event_date"])
    assert store.version("t") == version


def test_append_adds_rows_and_txn_makes_it_idempotent(spark, store):
    df = spark.createDataFrame(rows(), SCHEMA)
    store.overwrite(df, "t", ["event_date"])
    assert store.append(df, "t", ["event_date"], txn=("ingest-test", 1)) is True
    assert store.append(df, "t", ["event_date"], txn=("ingest-test", 1)) is False
    assert store.read("t").count() == 6


def test_protocol_stays_readable_by_delta_spark(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    assert store.protocol("t") == (1, 2)
    table = DeltaTable(store.location("t"))
    assert not table.protocol().reader_features and not table.protocol().writer_features
    assert "delta.columnMapping.mode" not in table.metadata().configuration
    schema = json.loads(table.schema().to_json())
    assert {f["name"]: f["type"] for f in schema["fields"]}["event_time"] == "timestamp"
    assert "timestamp_ntz" not in table.schema().to_json()


def test_naive_timestamps_are_refused(spark, store):
    ntz = spark.createDataFrame([(dt.datetime(2026, 9, 1),)], "t timestamp_ntz")
    with pytest.raises(StorageError, match="timestamp_ntz"):
        store.overwrite(ntz, "t")


def test_file_stats_come_from_parquet_footers(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    actions = pa.table(DeltaTable(store.location("t")).get_add_actions(flatten=True)).to_pydict()
    assert sum(actions["num_records"]) == 3
    first = actions["path"].index(next(p for p in actions["path"] if "2026-09-01" in p))
    assert actions["min.quantity"][first] == 3 and actions["max.quantity"][first] == 3


def test_full_overwrite_may_change_schema_and_partitioning(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    store.overwrite(spark.range(4), "t")
    assert sorted(r.id for r in store.read("t").collect()) == [0, 1, 2, 3]


def test_views_make_tables_queryable_by_name(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "user_features", ["event_date"])
    assert "user_features" in store.register_views()
    assert spark.sql("SELECT count(*) AS n FROM user_features").head().n == 3


def test_missing_upstream_table_names_the_stage(store):
    with pytest.raises(StorageError, match="events_silver does not exist.*before 'features'"):
        store.read_or_fail("events_silver", "features")


def test_invalid_table_name_is_refused(spark, store):
    with pytest.raises(StorageError, match="invalid table name"):
        store.overwrite(spark.range(1), "x; DROP TABLE y")


def test_delta_spark_engine_without_jars_says_how_to_add_them(spark, cfg):
    cfg.storage.engine = "delta-spark"
    with pytest.raises(StorageError, match=r"--packages io\.delta:delta-spark_2\.13"):
        open_store(spark, cfg.storage)
    with pytest.raises(StorageError, match="jars are not loaded"):
        DeltaSparkStore(spark, cfg.storage)


def test_new_trailing_columns_evolve_the_schema(spark, store):
    store.overwrite(spark.createDataFrame(rows(), SCHEMA), "t", ["event_date"])
    wider = (
        spark.createDataFrame(rows(), SCHEMA)
        .withColumn("user_id", F.lit("v2"))
        .withColumn("score", F.lit(0.5))
    )
    store.append(wider, "t", ["event_date"])
    back = store.read("t")
    assert back.columns[-1] == "score"
    assert back.where("user_id = 'v2'").select("score").distinct().collect()[0].score == 0.5
    assert back.where("user_id <> 'v2' AND score IS NULL").count() == 3  # the old rows
    assert store.protocol("t") == (1, 2)  # still readable by delta-spark
    narrower = spark.createDataFrame(rows(), SCHEMA)  # dropping a column is still refused
    with pytest.raises(StorageError, match=r"missing columns \['score'\]"):
        store.append(narrower, "t", ["event_date"])
