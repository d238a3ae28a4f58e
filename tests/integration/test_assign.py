"""`segment assign` on the shared generated lake: the fit's own users rescored give the fit's segments;
on a copy, a second day of logs (returning users and new ones) is ingested and assigned without
retraining, only those users' rows change, and assigning again changes nothing."""

import shutil

import pytest
from pyspark.sql import functions as F

from segmentation.artifacts import published
from segmentation.errors import StageError
from segmentation.pipeline import run_stage
from segmentation.storage import open_store
from segmentation.tables import (
    PIPELINE_RUNS,
    SEGMENT_CENTROIDS,
    USER_SEGMENTS,
)
from tests.conftest import LAKE_SETTINGS, make_config
from tests.integration.segment_checks import (
    assert_history_follows_the_segments,
    assert_rescoring_reproduces_the_fit,
    day2_logs,
)


def test_assign_path_rescores_the_fitted_users_as_the_fit_did(spark, lake):
    assert_rescoring_reproduces_the_fit(spark, lake.cfg)


def test_assign_needs_a_fitted_segmenter(spark, cfg):
    with pytest.raises(StageError, match="no fitted segmenter .*run `segment cluster` first"):
        run_stage(spark, cfg, "assign", "too-early")


@pytest.mark.slow
def test_assign_scores_only_users_with_new_events_and_twice_changes_nothing(spark, lake, tmp_path):
    shutil.copytree(lake.root / "lake", tmp_path / "lake")
    cfg = make_config(tmp_path, *LAKE_SETTINGS, f"input.path={tmp_path / 'day2'}")
    store = open_store(spark, cfg.storage)
    before = {r.user_id: r for r in store.read(USER_SEGMENTS).collect()}  # 2k users: small
    users = sorted(before)
    returning, sources = users[:12], users[12:20]
    day2_logs(spark, store, returning, sources, tmp_path / "day2")

    run_stage(spark, cfg, "ingest", "day2-ingest")
    result = run_stage(spark, cfg, "assign", "day2-assign")

    after = {r.user_id: r for r in store.read(USER_SEGMENTS).collect()}
    new = {f"new-{u}" for u in sources}
    assert set(after) == set(before) | new
    assigned = {u for u, r in after.items() if r.assigned_by == "assign"}
    assert assigned == set(returning) | new  # their features changed (twice the events), so their rows
    assert all(after[u] == before[u] for u in set(before) - assigned)  # everyone else untouched
    model = published(cfg.paths.current_segmenter)
    fitted_segments = {r.segment_id for r in store.read(SEGMENT_CENTROIDS).collect()}
    for u in assigned:
        row = after[u]
        assert (row.model_version, row.run_id, row.k) == (model, "day2-assign", before[users[0]].k)
        assert row.segment_id in fitted_segments and row.distance >= 0
        assert row.representation == before[users[0]].representation
    assert (result.users_scored, result.users_written, result.new_users) == (20, 20, 8)

    assert_history_follows_the_segments(store)
    moved = [u for u in returning if after[u].segment_id != before[u].segment_id]
    opened = store.read("user_segment_history").where(F.col("user_id").isin(moved)).count()
    assert opened == 2 * len(moved)  # each mover: the fitted stretch closed and the new one open

    version = store.snapshot(USER_SEGMENTS).version
    history = store.snapshot("user_segment_history").version
    again = run_stage(spark, cfg, "assign", "day2-again")
    assert (again.users_scored, again.users_written) == (20, 0)
    assert store.snapshot(USER_SEGMENTS).version == version  # no commit at all
    assert store.snapshot("user_segment_history").version == history
    runs = (
        store.read(PIPELINE_RUNS).where("stage = 'assign'").select("run_id", "status", "rows_out").collect()
    )
    assert {(r.run_id, r.status, r.rows_out) for r in runs} >= {
        ("day2-assign", "success", 20),
        ("day2-again", "success", 0),
    }
