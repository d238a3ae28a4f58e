"""`segment sql` output formats, one stage through the CLI, and a failed stage in pipeline_runs."""

import csv
import io
import json

import pytest

from segmentation.cli import main
from segmentation.errors import StorageError
from segmentation.pipeline import run_stage
from segmentation.storage import open_store
from segmentation.tables import PIPELINE_RUNS, USER_SEGMENTS
from tests.conftest import REPO

ROWS = [("u1", 0, 0.5), ("u2", 1, None), ("u3", 1, 2.25)]


@pytest.fixture
def segments(spark, cfg, tmp_path):
    """A tiny user_segments table, and the CLI arguments that point at it."""
    frame = spark.createDataFrame(ROWS, "user_id string, segment_id int, distance double")
    open_store(spark, cfg.storage).overwrite(frame, USER_SEGMENTS)
    return [
        "--conf",
        str(REPO / "conf" / "local.yaml"),
        "--set",
        f"storage.root={cfg.storage.root}",
        "--set",
        "spark.master=local[2]",
    ]


QUERY = "SELECT user_id, segment_id, distance FROM user_segments ORDER BY user_id"


def test_sql_json_is_one_object_per_row(segments, capsys):
    assert main(["sql", QUERY, "--format", "json", *segments]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {"user_id": "u1", "segment_id": 0, "distance": 0.5},
        {"user_id": "u2", "segment_id": 1},  # Spark's JSON leaves nulls out
        {"user_id": "u3", "segment_id": 1, "distance": 2.25},
    ]


def test_sql_csv_has_a_header_and_empty_nulls(segments, capsys):
    assert main(["sql", QUERY, "--format", "csv", *segments]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["user_id", "segment_id", "distance"],
        ["u1", "0", "0.5"],
        ["u2", "1", ""],
        ["u3", "1", "2.25"],
    ]


def test_sql_table_shows_nulls_and_says_when_it_cut_rows(segments, capsys):
    assert main(["sql", QUERY, "--limit", "2", *segments]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split("|")[1:4] == [" user_id ", " segment_id ", " distance "]
    assert [line.split("|")[1].strip() for line in out[3:5]] == ["u1", "u2"]
    assert "NULL" in out[4]
    assert out[-1] == "2 row(s) (first 2; use --limit or --format json for all)"


def test_sql_errors_are_one_line_and_exit_non_zero(segments, capsys):
    assert main(["sql", "SELECT * FROM no_such_table", *segments]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segment sql: failed: AnalysisException")


def test_a_failed_stage_is_recorded_with_its_error(spark, cfg):
    with pytest.raises(StorageError, match="events_silver does not exist"):
        run_stage(spark, cfg, "features", "failing-run")
    row = open_store(spark, cfg.storage).read(PIPELINE_RUNS).where("run_id = 'failing-run'").collect()
    assert len(row) == 1 and row[0].stage == "features" and row[0].status == "failed"
    assert row[0].finished_at >= row[0].started_at
    details = json.loads(row[0].details)
    assert details["error"].startswith("StorageError: table events_silver does not exist")


def test_a_stage_through_the_cli_prints_its_summary(segments, cfg, capsys):
    settings = ["--set", "maintain.vacuum_retain_hours=null", "--set", "maintain.tables=[user_segments]"]
    assert main(["maintain", *segments, *settings]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage"] == "maintain" and summary["rows_in"] == summary["rows_out"] == 3
    assert summary["files_after"] >= 1 and summary["engine"] in ("delta-spark", "delta-rs")
    assert "tables" not in summary  # details stay in pipeline_runs


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT OVERWRITE DIRECTORY '{root}/events_silver' USING parquet SELECT 1 AS x",
        "DROP TABLE user_segments",
        "WITH a AS (SELECT * FROM user_segments) INSERT INTO user_segments SELECT * FROM a",
        "FROM user_segments INSERT INTO user_segments SELECT *",
        "DELETE FROM user_segments WHERE segment_id = 1",
        "CACHE TABLE user_segments",
    ],
)
def test_sql_refuses_statements_that_write_and_changes_nothing(segments, cfg, spark, capsys, statement):
    before = open_store(spark, cfg.storage).snapshot(USER_SEGMENTS).version
    assert main(["sql", statement.format(root=cfg.storage.root), *segments]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs queries only" in err[0] and "--allow-writes" in err[0]
    store = open_store(spark, cfg.storage)
    assert store.snapshot(USER_SEGMENTS).version == before and store.read(USER_SEGMENTS).count() == 3


def test_sql_queries_and_descriptions_pass_the_read_only_check(spark):
    from segmentation.cli import is_read_only, statement_nodes

    for query in (
        "SELECT * FROM user_segments VERSION AS OF 0",
        "  -- a comment first\n(SELECT 1)",
        "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
        "DESCRIBE HISTORY user_segments",
        "SHOW CREATE TABLE user_segments",
        "EXPLAIN SELECT 1",
        "VALUES (1)",
    ):
        assert is_read_only(query, statement_nodes(spark, query)), query


def test_sql_runs_a_write_when_allowed(segments, cfg, spark, capsys):
    statement = "DELETE FROM user_segments WHERE user_id = 'u1'"
    assert main(["sql", statement, "--allow-writes", *segments]) == 0
    assert open_store(spark, cfg.storage).read(USER_SEGMENTS).count() == 2


def test_resuming_an_unknown_run_is_an_error_and_runs_nothing(segments, cfg, spark, capsys):
    assert main(["run", "--resume", "no-such-run", *segments]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "segment run: error: --resume no-such-run: pipeline_runs has no run of that id (nothing to resume)"
    ]
    assert not open_store(spark, cfg.storage).exists("events_bronze")


@pytest.mark.parametrize("stage", ["ingest", "cluster", "run", "sql", "generate", "bench", "check-drift"])
def test_each_stage_has_its_own_help(stage, capsys):
    from segmentation.cli import main
    from segmentation.registry import COMMANDS, STAGES

    with pytest.raises(SystemExit) as done:
        main([stage, "--help"])
    assert done.value.code == 0
    page = capsys.readouterr().out
    assert page.startswith(f"usage: segment {stage}")
    described = {s.name: s.help for s in STAGES} | COMMANDS
    assert described[stage].split(" ")[0] in page
    own = {"run": "--resume", "sql": "--allow-writes", "generate": "--force", "bench": "--out"}
    for command, option in own.items():
        assert (option in page) == (command == stage)
