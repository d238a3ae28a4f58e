"""The notebooks in notebooks/, executed top to bottom as Databricks would run their cells, from the
notebooks' own folder (so a config path relative to it would fail), against a copy of the shared lake
with a day of new logs for the operate notebook to assign."""

from __future__ import annotations

import ast
import contextlib
import io
import shutil

import pytest

from segmentation.pipeline import run_stage
from segmentation.storage import open_store
from segmentation.tables import PIPELINE_RUNS, USER_SEGMENTS
from tests.conftest import LAKE_SETTINGS, REPO, make_config
from tests.integration.segment_checks import day2_logs

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
SEPARATOR = "# COMMAND ----------"


def cells(path) -> list[str]:
    """The code cells of a Databricks source notebook (markdown cells are # MAGIC comments)."""
    source = path.read_text()
    assert source.startswith("# Databricks notebook source\n"), (
        f"{path.name} is not a Databricks source notebook"
    )
    code = [c.strip() for c in source.split(SEPARATOR)[1:]]
    return [c for c in code if any(not line.startswith("#") for line in c.splitlines() if line.strip())]


def test_every_notebook_is_a_databricks_source_notebook_with_markdown():
    assert {p.name for p in NOTEBOOKS} == {"explore_segments.py", "operate_segments.py"}
    for path in NOTEBOOKS:
        text = path.read_text()
        assert "# MAGIC %md" in text and len(cells(path)) >= 5, path.name
        for cell in cells(path):
            ast.parse(cell)  # each cell is valid Python on its own


def test_the_notebooks_run_top_to_bottom_from_their_folder(spark, lake, tmp_path, monkeypatch):
    shutil.copytree(lake.root / "lake", tmp_path / "lake")
    settings = [f"storage.root={tmp_path / 'lake'}", f"input.path={tmp_path / 'day2'}", *LAKE_SETTINGS]
    store = open_store(spark, make_config(tmp_path, *settings).storage)
    users = sorted(r.user_id for r in store.read(USER_SEGMENTS).select("user_id").collect())
    day2_logs(spark, store, users[:10], users[10:15], tmp_path / "day2")
    run_stage(spark, make_config(tmp_path, *settings), "ingest", "day2")

    monkeypatch.chdir(REPO / "notebooks")
    monkeypatch.setenv("SEGMENTATION_SET", "\n".join(settings))
    printed = {}
    for path in NOTEBOOKS:
        namespace = {"__name__": "__main__"}
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            for number, cell in enumerate(cells(path), 1):
                try:
                    exec(compile(cell, f"{path.name}[cell {number}]", "exec"), namespace)
                except Exception as exc:  # the cell that failed, by number, in the test's message
                    pytest.fail(f"{path.name}, cell {number}: {type(exc).__name__}: {exc}")
        printed[path.name] = output.getvalue()
        monkeypatch.chdir(REPO / "notebooks")  # open_lake moved to the repository root

    explored = printed["explore_segments.py"]
    for column in ("selection_reason", "rule", "precision", "hit_rate", "distance"):
        assert f"|{column}" in explored.replace(" ", ""), column
    operated = printed["operate_segments.py"]
    assert "'rows_out': 15" in operated  # the assign cell's summary: 10 returning and 5 new users
    assert "retrain_recommended" in operated  # the drift cell's summary row
    assign = store.read(PIPELINE_RUNS).where("stage = 'assign'").collect()
    assert [r.status for r in assign] == ["success"]
