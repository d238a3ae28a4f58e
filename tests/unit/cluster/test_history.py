"""user_segment_history: type-2 history of each user's segment, kept in step with user_segments."""

import datetime as dt

import pytest

from segmentation.cluster import history
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import USER_SEGMENT_HISTORY, USER_SEGMENTS

SCHEMA = "user_id string, segment_id int, model_version string, assigned_at timestamp"
T1 = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 9, 8, tzinfo=dt.UTC)


@pytest.fixture
def ctx(spark, cfg):
    return StageContext.create(spark, cfg, "h")


def _segments(ctx, rows):
    ctx.store.overwrite(ctx.spark.createDataFrame(rows, SCHEMA), USER_SEGMENTS)


def _history(ctx):
    rows = ctx.store.read(USER_SEGMENT_HISTORY).collect()
    return sorted((r.user_id, r.segment_id, r.valid_from, r.valid_to, r.is_current) for r in rows)


def test_history_opens_closes_and_answers_as_of_a_date(spark, cfg, ctx):
    _segments(ctx, [("a", 1, "m1", T1), ("b", 2, "m1", T1), ("c", 1, "m1", T1)])
    assert history.sync(ctx) == 3
    # a refit: a moves, b keeps its (stable) id, c is left out, d arrives
    _segments(ctx, [("a", 2, "m2", T2), ("b", 2, "m2", T2), ("d", 1, "m2", T2)])
    assert history.sync(ctx) == 4  # a closed and opened, c closed, d opened
    t1, t2 = T1.replace(tzinfo=None), T2.replace(tzinfo=None)  # Spark returns session-zone (UTC) naive times
    assert _history(ctx) == [
        ("a", 1, t1, t2, False),
        ("a", 2, t2, None, True),
        ("b", 2, t1, None, True),
        ("c", 1, t1, t2, False),
        ("d", 1, t2, None, True),
    ]
    open_store(spark, cfg.storage).register_views()
    on = spark.sql(
        "SELECT user_id, segment_id FROM user_segment_history "
        "WHERE valid_from <= TIMESTAMP'2026-09-05' AND (valid_to IS NULL OR valid_to > TIMESTAMP'2026-09-05')"
    ).collect()
    assert sorted((r.user_id, r.segment_id) for r in on) == [("a", 1), ("b", 2), ("c", 1)]

    version = ctx.store.snapshot(USER_SEGMENT_HISTORY).version
    assert history.sync(ctx) == 0  # nothing changed: no commit
    assert ctx.store.snapshot(USER_SEGMENT_HISTORY).version == version
