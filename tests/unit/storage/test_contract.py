"""One contract for both Delta engines (DESIGN.md §4): every test runs on delta-spark and on delta-rs."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from segmentation.errors import ConcurrentWriteError, StorageError
from segmentation.storage import TABLE_PROPERTIES
from segmentation.storage.base import local_file
from tests.unit.storage.conftest import SCHEMA, UTC, rows


def partition_rows(store, name):
    return sorted((r.event_date.isoformat(), r.user_id) for r in store.read(name).collect())


def test_round_trip_of_every_column_type(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    back = store.read("t")
    assert back.schema.simpleString() == frame.schema.simpleString()
    assert sorted(back.collect()) == sorted(frame.collect())
    # The instant survives: 23:59:59.123456 UTC is still that, as epoch microseconds.
    micros = back.where("user_id = 'u1'").select(F.unix_micros("event_time")).head()[0]
    assert micros == int(dt.datetime(2026, 9, 1, 23, 59, 59, 123456, tzinfo=UTC).timestamp() * 1_000_000)


def test_timestamps_stay_utc_whatever_the_session_zone(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        micros = store.read("t").where("user_id = 'u3'").select(F.unix_micros("event_time")).head()[0]
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert micros == int(dt.datetime(2026, 9, 3, 12, tzinfo=UTC).timestamp() * 1_000_000)


def test_interop_properties_are_set_explicitly_and_kept(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.append(frame.withColumn("user_id", F.lit("more")), "t", ["event_date"])
    store.replace_where(frame.where("user_id = 'u1'"), "t", "event_date", [dt.date(2026, 9, 1)])
    properties = store.properties("t")
    assert {k: properties.get(k) for k in TABLE_PROPERTIES} == TABLE_PROPERTIES
    assert store.protocol("t") == (1, 2)  # no reader or writer table features: any Delta reader opens it


def test_replace_where_replaces_exactly_those_partitions(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    replacement = spark.createDataFrame(
        [("u9", dt.datetime(2026, 9, 2, 8, tzinfo=UTC), dt.date(2026, 9, 2), 9.0, 1, 1, False, [1.0], None)],
        SCHEMA,
    )
    # 2026-09-03 is named but gets no rows: its rows go (a rebuilt day can end up empty).
    store.replace_where(replacement, "t", "event_date", [dt.date(2026, 9, 2), dt.date(2026, 9, 3)])
    assert partition_rows(store, "t") == [("2026-09-01", "u1"), ("2026-09-02", "u9")]


def test_replace_where_refuses_rows_outside_the_partitions_it_names(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    version = store.version("t")
    with pytest.raises(Exception, match=r"(?i)replaceWhere|outside|predicate|DELTA_REPLACE_WHERE"):
        store.replace_where(frame, "t", "event_date", [dt.date(2026, 9, 2)])
    assert store.version("t") == version
    assert partition_rows(store, "t") == [("2026-09-01", "u1"), ("2026-09-02", "u2"), ("2026-09-03", "u3")]


def test_replace_where_creates_a_missing_table_partitioned_by_its_column(spark, store, frame):
    store.replace_where(frame, "t", "event_date", [dt.date(2026, 9, d) for d in (1, 2, 3)])
    assert len(partition_rows(store, "t")) == 3
    spark_parts = store.read("t").inputFiles()
    assert all("event_date=2026-09-0" in f for f in spark_parts)


def test_a_write_whose_job_fails_midway_leaves_the_table_unchanged(spark, store, frame, tmp_path):
    store.overwrite(frame, "t", ["event_date"])
    version, before = store.version("t"), sorted(store.read("t").collect())

    @F.udf(StringType())
    def fail_on_u2(user_id):
        if user_id == "u2":
            raise RuntimeError("simulated executor crash while writing files")
        return user_id

    # Three tasks: the others write their files before (or while) this one fails.
    failing = frame.repartition(3, "user_id").withColumn("user_id", fail_on_u2("user_id"))
    for write in (
        lambda: store.append(failing, "t", ["event_date"]),
        lambda: store.overwrite(failing, "t", ["event_date"]),
        lambda: store.replace_where(failing, "t", "event_date", [dt.date(2026, 9, d) for d in (1, 2, 3)]),
        lambda: store.merge(failing, "t", ["user_id"], ["event_date"]),
    ):
        with pytest.raises(Exception, match="simulated executor crash"):
            write()
    assert store.version("t") == version
    assert sorted(store.read("t").collect()) == before


def test_a_mismatched_schema_is_refused_and_nothing_is_written(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    version = store.version("t")
    renamed = frame.withColumnRenamed("value", "amount")
    retyped = frame.withColumn("n", F.col("n").cast("string"))
    for write in (
        lambda df: store.append(df, "t", ["event_date"]),
        lambda df: store.replace_where(df, "t", "event_date", [dt.date(2026, 9, d) for d in (1, 2, 3)]),
        lambda df: store.merge(df, "t", ["user_id"], ["event_date"]),
    ):
        with pytest.raises(StorageError, match=r"schema mismatch writing to t: missing columns \['value'\]"):
            write(renamed)
        with pytest.raises(StorageError, match=r"changed types \['n \(int -> string\)'\]"):
            write(retyped)
    assert store.version("t") == version


def test_new_trailing_columns_evolve_the_schema(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    wider = frame.withColumn("user_id", F.lit("v2")).withColumn("score", F.lit(0.5))
    store.append(wider, "t", ["event_date"])
    back = store.read("t")
    assert back.columns[-1] == "score"
    assert back.where("user_id = 'v2'").select("score").distinct().collect()[0].score == 0.5
    assert back.where("user_id <> 'v2' AND score IS NULL").count() == 3  # the old rows
    assert store.protocol("t") == (1, 2)
    # A partition rebuilt with the wider schema keeps the other partitions' rows, now null in it.
    day = wider.where("event_date = DATE'2026-09-01'")
    store.replace_where(day, "t", "event_date", [dt.date(2026, 9, 1)])
    assert store.read("t").where("event_date = DATE'2026-09-01'").count() == 1
    narrower = frame  # dropping a column is still refused
    with pytest.raises(StorageError, match=r"missing columns \['score'\]"):
        store.append(narrower, "t", ["event_date"])


def test_append_with_a_seen_txn_is_skipped(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    assert store.append(frame, "t", ["event_date"], txn=("ingest-test", 1)) is True
    assert store.append(frame, "t", ["event_date"], txn=("ingest-test", 1)) is False
    assert store.append(frame, "t", ["event_date"], txn=("ingest-test", 2)) is True
    assert store.read("t").count() == 9


def test_merge_updates_matching_keys_and_inserts_the_rest(spark, store, frame):
    store.merge(frame, "t", ["user_id"], ["event_date"])  # creates the table
    changed = frame.where("user_id = 'u1'").withColumn("value", F.lit(99.0))
    new = frame.where("user_id = 'u3'").withColumn("user_id", F.lit("u4"))
    store.merge(changed.unionByName(new), "t", ["user_id"], ["event_date"])
    store.merge(changed.unionByName(new), "t", ["user_id"], ["event_date"])  # the same upsert: no change
    got = {r.user_id: r.value for r in store.read("t").collect()}
    assert got == {"u1": 99.0, "u2": None, "u3": -2.0, "u4": -2.0}


def test_merge_on_an_unpartitioned_table(spark, store):
    store.merge(spark.createDataFrame([("a", 1), ("b", 2)], "k string, v int"), "m", ["k"])
    store.merge(spark.createDataFrame([("b", 20), ("c", 3)], "k string, v int"), "m", ["k"])
    assert sorted(tuple(r) for r in store.read("m").collect()) == [("a", 1), ("b", 20), ("c", 3)]
    for value in (4, 5):  # a null key is a key: matched, not inserted again
        store.merge(spark.createDataFrame([(None, value)], "k string, v int"), "m", ["k"])
    assert sorted((r.k or "", r.v) for r in store.read("m").collect()) == [
        ("", 5),
        ("a", 1),
        ("b", 20),
        ("c", 3),
    ]


def test_a_merge_keyed_by_the_partition_column_does_not_conflict_with_another_partitions_writer(
    spark, store, tmp_path
):
    """Stage records of two runs at once: while this merge into partition r2 runs, another writer's
    upsert into partition r1 commits (from inside the merge's own source, so it lands between the
    merge's read and its commit). The merge names the partitions it changes, so both land."""
    if store.engine_name == "delta-rs":
        pytest.skip("delta-rs 1.6.6 checks a partition replace against every file of the table")
    schema = "run string, stage string, v int"
    store.merge(
        spark.createDataFrame([("r1", "a", 1), ("r2", "a", 1)], schema), "runs", ["run", "stage"], ["run"]
    )
    path, marker = store.location("runs"), str(tmp_path / "other-writer-ran")

    def other_writer(v: int) -> int:
        import os

        if not os.path.exists(marker):  # once, however often Spark evaluates the source
            open(marker, "w").close()
            import pyarrow as pa
            from deltalake import DeltaTable

            row = pa.table({"run": ["r1"], "stage": ["a"], "v": pa.array([7], pa.int32())})
            merge = DeltaTable(path).merge(row, "t.run = s.run AND t.stage = s.stage", "s", "t")
            merge.when_matched_update_all().when_not_matched_insert_all().execute()
        return v

    source = spark.createDataFrame([("r2", "a", 2), ("r2", "b", 3)], schema)
    store.merge(source.withColumn("v", F.udf(other_writer, "int")("v")), "runs", ["run", "stage"])
    assert Path(marker).exists()
    got = sorted(tuple(r) for r in store.read("runs").collect())
    assert got == [("r1", "a", 7), ("r2", "a", 2), ("r2", "b", 3)]


def test_a_merge_with_a_null_partition_value_upserts_it(spark, store):
    schema = "run string, stage string, v int"
    store.merge(
        spark.createDataFrame([("r1", "a", 1), (None, "a", 1)], schema), "runs", ["run", "stage"], ["run"]
    )
    store.merge(spark.createDataFrame([(None, "a", 2), ("r1", "b", 3)], schema), "runs", ["run", "stage"])
    got = sorted((r.run or "", r.stage, r.v) for r in store.read("runs").collect())
    assert got == [("", "a", 2), ("r1", "a", 1), ("r1", "b", 3)]


def test_time_travel_and_history(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.append(frame.withColumn("user_id", F.lit("later")), "t", ["event_date"])
    assert store.version("t") == 1
    assert store.read("t", version=0).count() == 3 and store.read("t").count() == 6
    history = store.history("t")
    assert [h["version"] for h in history] == [1, 0]
    assert all(isinstance(h["timestamp"], dt.datetime) and h["operation"] for h in history)


def test_snapshot_names_the_files_of_the_current_version(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.replace_where(frame.where("user_id = 'u1'"), "t", "event_date", [dt.date(2026, 9, 1)])
    snapshot = store.snapshot("t")
    assert snapshot.version == store.version("t") and snapshot.rows == 3
    assert all(Path(f).is_file() for f in snapshot.files)
    # Exactly the files Delta reads now: the replaced day's old file is not among them.
    spark_files = {
        F_path.removeprefix("file://").removeprefix("file:") for F_path in store.read("t").inputFiles()
    }
    assert set(snapshot.files) == spark_files
    assert spark.read.parquet(*snapshot.files).count() == 3


def test_optimize_compacts_small_files_without_changing_rows(spark, store, frame):
    store.overwrite(frame.where("event_date = DATE'2026-09-01'"), "t", ["event_date"])
    for i in range(4):
        store.append(
            frame.where("event_date = DATE'2026-09-01'").withColumn("n", F.lit(i)), "t", ["event_date"]
        )
    before = sorted(store.read("t").collect())
    assert len(store.snapshot("t").files) == 5
    metrics = store.optimize("t")
    assert metrics["files_removed"] == 5 and metrics["files_added"] == 1
    assert len(store.snapshot("t").files) == 1
    assert sorted(store.read("t").collect()) == before
    assert {k: store.properties("t").get(k) for k in TABLE_PROPERTIES} == TABLE_PROPERTIES


def test_vacuum_keeps_what_retention_protects_and_removes_the_rest(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.overwrite(frame.withColumn("user_id", F.lit("new")), "t", ["event_date"])
    on_disk = lambda: {str(p) for p in Path(store.location("t")).rglob("*.parquet")}  # noqa: E731
    assert len(on_disk()) == 6
    assert store.vacuum("t", retain_hours=168) == 0  # a week: version 0 is still readable
    assert store.read("t", version=0).count() == 3
    assert store.vacuum("t", retain_hours=0, enforce_retention=False) == 3
    assert on_disk() == set(store.snapshot("t").files)
    assert sorted(r.user_id for r in store.read("t").collect()) == ["new"] * 3


def test_full_overwrite_may_change_schema_and_partitioning(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.overwrite(spark.range(4), "t")
    assert sorted(r.id for r in store.read("t").collect()) == [0, 1, 2, 3]
    assert {k: store.properties("t").get(k) for k in TABLE_PROPERTIES} == TABLE_PROPERTIES


def test_naive_timestamps_are_refused(spark, store):
    ntz = spark.createDataFrame([(dt.datetime(2026, 9, 1),)], "t timestamp_ntz")
    with pytest.raises(StorageError, match="timestamp_ntz"):
        store.overwrite(ntz, "t")


def test_missing_upstream_table_names_the_stage(store):
    with pytest.raises(StorageError, match="events_silver does not exist.*before 'features'"):
        store.read_or_fail("events_silver", "features")


def test_invalid_table_name_is_refused(spark, store):
    with pytest.raises(StorageError, match="invalid table name"):
        store.overwrite(spark.range(1), "x; DROP TABLE y")


def test_views_make_tables_queryable_by_name(spark, store, frame):
    store.overwrite(frame, "user_features", ["event_date"])
    assert "user_features" in store.register_views()
    assert spark.sql("SELECT count(*) AS n FROM user_features").head().n == 3


# ---------------------------------------------------------------- concurrent writers


def _meeting_point(tmp_path: Path, parties: int):
    """A UDF that holds each writer's only task until every writer's task runs: both writers have
    read the table's version (their transactions started) and write their files at the same time."""
    directory = tmp_path / f"meet-{time.time_ns()}"
    directory.mkdir()

    @F.udf(StringType())
    def meet(writer):
        import os
        import time as clock

        marker = os.path.join(str(directory), str(writer))
        if not os.path.exists(marker):
            open(marker, "w").close()
        deadline = clock.time() + 60
        while len(os.listdir(str(directory))) < parties and clock.time() < deadline:
            clock.sleep(0.05)
        return writer

    return meet


def _run_concurrently(writes) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * len(writes)

    def attempt(i):
        try:
            writes[i]()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            outcomes[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(writes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return outcomes


def test_concurrent_replacements_of_one_partition_never_mix(spark, store, frame, tmp_path):
    store.overwrite(frame, "t", ["event_date"])
    meet = _meeting_point(tmp_path, 2)
    day = dt.date(2026, 9, 2)

    def writer(tag):
        rows = (
            frame.where("event_date = DATE'2026-09-02'").coalesce(1).withColumn("user_id", meet(F.lit(tag)))
        )
        return lambda: store.replace_where(rows, "t", "event_date", [day])

    outcomes = _run_concurrently([writer("A"), writer("B")])
    failures = [o for o in outcomes if o is not None]
    for failure in failures:
        assert isinstance(failure, StorageError) and "another writer committed first" in str(failure)
    assert len(failures) <= 1
    got = [r.user_id for r in store.read("t").where(F.col("event_date") == day).collect()]
    assert got in (["A"], ["B"])  # one writer's rows, never both, never none
    if failures:
        winner = "A" if outcomes[0] is None else "B"
        assert got == [winner]
    assert partition_rows(store, "t")[0] == ("2026-09-01", "u1")


def test_concurrent_appends_keep_every_committed_row_once(spark, store, frame, tmp_path):
    store.overwrite(frame, "t", ["event_date"])
    meet = _meeting_point(tmp_path, 2)

    def writer(tag):
        rows = frame.coalesce(1).withColumn("user_id", meet(F.lit(tag)))
        return lambda: store.append(rows, "t", ["event_date"])

    outcomes = _run_concurrently([writer("A"), writer("B")])
    committed = [tag for tag, o in zip("AB", outcomes, strict=True) if o is None]
    for failure in (o for o in outcomes if o is not None):
        assert isinstance(failure, StorageError) and "another writer committed first" in str(failure)
    counts = {r.user_id: r["count"] for r in store.read("t").groupBy("user_id").count().collect()}
    assert {tag: counts.get(tag, 0) for tag in "AB"} == {tag: 3 if tag in committed else 0 for tag in "AB"}
    assert len(committed) >= 1
    assert len(rows()) == 3


def test_a_guarded_write_never_lands_on_a_newer_generation(spark, store, frame):
    """The lost update: A reads, B (same kind of writer) commits, A's write must not replace B's."""
    store.overwrite(frame, "t", ["event_date"])
    day = dt.date(2026, 9, 2)
    a = store.read_point("t", "writer")
    b = store.read_point("t", "writer")
    assert (a.version, a.generation) == (b.version, 0)
    b_rows = frame.where("event_date = DATE'2026-09-02'").withColumn("user_id", F.lit("B"))
    store.replace_where(b_rows, "t", "event_date", [day], guard=b)
    store.optimize("t")  # a commit that changes no rows does not count against a guard
    a_rows = b_rows.withColumn("user_id", F.lit("A"))
    with pytest.raises(ConcurrentWriteError, match="another writer writer committed generation 1"):
        store.replace_where(a_rows, "t", "event_date", [day], guard=a)
    with pytest.raises(ConcurrentWriteError):
        store.overwrite(a_rows, "t", ["event_date"], guard=a)
    assert partition_rows(store, "t") == [("2026-09-01", "u1"), ("2026-09-02", "B"), ("2026-09-03", "u3")]
    fresh = store.read_point("t", "writer")
    assert fresh.generation == 1 and fresh.version > b.version
    store.replace_where(a_rows, "t", "event_date", [day], guard=fresh)
    assert ("2026-09-02", "A") in partition_rows(store, "t")
    assert store.read_point("t", "writer").generation == 2


def test_a_guard_taken_before_the_table_existed(spark, store, frame):
    a = store.read_point("t", "writer")
    assert a.version is None
    store.overwrite(frame, "t", ["event_date"], guard=store.read_point("t", "writer"))
    with pytest.raises(ConcurrentWriteError, match="created the table"):
        store.overwrite(frame.withColumn("user_id", F.lit("A")), "t", ["event_date"], guard=a)
    assert len(partition_rows(store, "t")) == 3 and store.read_point("t", "writer").generation == 1


def test_a_generation_is_read_through_the_newest_checkpoint_alone(spark, store, frame):
    """Log cleanup removes the commits a checkpoint covers, and a log that grows by the minute must not
    be read whole: a generation recorded only in the newest checkpoint is found, without the
    `_last_checkpoint` hint too, and an older checkpoint (here unreadable) is never opened."""
    store.overwrite(frame, "t", ["event_date"])
    store.set_properties("t", {"delta.checkpointInterval": "2"})
    for generation in (1, 2, 3):
        store.append(frame.limit(1), "t", ["event_date"], txn=("writer", generation))
    assert store.read_point("t", "writer").generation == 3  # the version read is a checkpoint's own
    store.append(frame.limit(1), "t", ["event_date"])  # a commit after the checkpoint, of no writer
    log_dir = Path(store.location("t")) / "_delta_log"
    checkpoints = sorted(log_dir.glob("*.checkpoint*.parquet"))
    assert len(checkpoints) >= 2, [p.name for p in log_dir.iterdir()]
    newest = int(checkpoints[-1].name.split(".")[0])
    for old in checkpoints[:-1]:
        old.write_bytes(b"not a checkpoint")
    for commit in log_dir.glob("*.json"):
        if int(commit.name.split(".")[0]) <= newest:
            commit.unlink()
    assert store.read_point("t", "writer").generation == 3
    assert store.read_point("t", "other").generation == 0
    (log_dir / "_last_checkpoint").unlink()
    assert store.read_point("t", "writer").generation == 3


def test_the_commit_itself_refuses_a_stale_guard(spark, store, frame, monkeypatch):
    """The early check is a courtesy; the commit is what holds (another writer may commit between
    the check and the commit): with the check switched off the stale write still does not land."""
    store.overwrite(frame, "t", ["event_date"])
    day = dt.date(2026, 9, 2)
    a = store.read_point("t", "writer")
    rows_for = lambda tag: frame.where("event_date = DATE'2026-09-02'").withColumn("user_id", F.lit(tag))  # noqa: E731
    store.replace_where(rows_for("B"), "t", "event_date", [day], guard=store.read_point("t", "writer"))
    monkeypatch.setattr(type(store), "check_guard", lambda self, guard: None)
    with pytest.raises(ConcurrentWriteError):
        store.replace_where(rows_for("A"), "t", "event_date", [day], guard=a)
    assert ("2026-09-02", "B") in partition_rows(store, "t")
    assert ("2026-09-02", "A") not in partition_rows(store, "t")
    # and it leaves no data file behind that the table does not reference
    on_disk = {str(p) for p in Path(store.location("t")).rglob("*.parquet")}
    assert on_disk == set(store.snapshot("t").files) | _removed_files(store, "t")


def _removed_files(store, name):
    """Files of earlier versions (still on disk until VACUUM): in every version's snapshot."""
    files = set()
    for entry in store.history(name):
        files |= set(store.read(name, entry["version"]).inputFiles())
    return {local_file(f) for f in files}


def test_product_properties_are_recorded_on_a_table(spark, store, frame):
    store.overwrite(frame, "t", ["event_date"])
    store.set_properties("t", {"segment.pseudonymized": "true"})
    assert store.properties("t")["segment.pseudonymized"] == "true"
    assert all(store.properties("t")[k] == v for k, v in TABLE_PROPERTIES.items())
    store.overwrite(frame, "t", ["event_date"])  # an overwrite keeps what was recorded
    assert store.properties("t").get("segment.pseudonymized") == "true"
