"""Segment lists by support and lift, the popularity baseline, and the temporal-split evaluation,
against figures computed by hand."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from segmentation.recommend import evaluate, lists

T0 = dt.datetime(2026, 3, 1, 12, 0)

# Two segments of four users. Before the cutoff: x bought by 3 of A and 1 of B, y by 1 of A and 3 of
# B, z by 2 of each; a4 and b4 bought nothing. Shares of all 8 users: 4/8 each, so lift = 2 x support.
BEFORE = [("a1", "x"), ("a2", "x"), ("a3", "x"), ("b1", "x"), ("a1", "y"), ("b1", "y"), ("b2", "y"),
          ("b3", "y"), ("a1", "z"), ("a2", "z"), ("b1", "z"), ("b2", "z")]  # fmt: skip
SEGMENTS = [(u, 0) for u in ("a1", "a2", "a3", "a4")] + [(u, 1) for u in ("b1", "b2", "b3", "b4")]


def _purchases(spark, rows, when=T0):
    return spark.createDataFrame(
        [(u, k, when) for u, k in rows], "user_id string, key string, event_time timestamp"
    )


def _segments(spark):
    return spark.createDataFrame(SEGMENTS, "user_id string, segment_id int")


def _lists(frame):
    out = {}
    for r in frame.orderBy("segment_id", "rank").collect():
        out.setdefault(r.segment_id, []).append((r.key, r.buyers, r.support, r.lift))
    return out


def test_support_ranks_what_a_segment_buys_most(spark):
    got = _lists(lists.segment_lists(_purchases(spark, BEFORE), _segments(spark), 10, "support", 1))
    assert got[0] == [("x", 3, 0.75, 1.5), ("z", 2, 0.5, 1.0), ("y", 1, 0.25, 0.5)]


def test_distinctive_ranks_what_a_segment_buys_more_than_everyone(spark):
    got = _lists(lists.segment_lists(_purchases(spark, BEFORE), _segments(spark), 10, "distinctive", 1))
    # A: x support 0.75 lift 1.5; z lift exactly 1 and y 0.5 are not characteristic of A
    assert got == {0: [("x", 3, 0.75, 1.5)], 1: [("y", 3, 0.75, 1.5)]}


def test_lift_ranks_the_most_characteristic_first_among_enough_buyers(spark):
    got = _lists(lists.segment_lists(_purchases(spark, BEFORE), _segments(spark), 10, "lift", 1))
    assert [k for k, *_ in got[0]] == ["x", "z", "y"] and got[0][2] == ("y", 1, 0.25, 0.5)
    got = _lists(lists.segment_lists(_purchases(spark, BEFORE), _segments(spark), 10, "lift", 2))
    assert [k for k, *_ in got[0]] == ["x", "z"]  # y has one buyer in A
    got = _lists(lists.segment_lists(_purchases(spark, BEFORE), _segments(spark), 1, "lift", 1))
    assert {s: len(v) for s, v in got.items()} == {0: 1, 1: 1}  # top_n


def test_popularity_is_the_most_bought_with_ties_by_key(spark):
    rows = lists.popularity_list(_purchases(spark, BEFORE + [("a4", "w")]), _segments(spark), 3).collect()
    assert [(r.rank, r.key, r.buyers) for r in rows] == [(1, "x", 4), (2, "y", 4), (3, "z", 4)]


def test_the_temporal_split_scores_new_purchases_by_hit_rate_and_ndcg(spark):
    """After the cutoff: a4 (nothing before) buys z; a1 buys x again (not new) and w; b4 buys y.
    Lists by lift, k=2. Segment A's list x, z, y: a4 is shown x, z -> hit at 2, NDCG 1/log2(3);
    a1 (bought x, y, z before) is shown nothing new -> miss. B's list y, z, x: b4 is shown y, z -> hit
    at 1, NDCG 1. Popularity x, y, z: a4 sees x, y (miss), b4 sees x, y (hit at 2)."""
    after = [("a4", "z"), ("a1", "x"), ("a1", "w"), ("b4", "y")]
    purchases = _purchases(spark, BEFORE).unionByName(_purchases(spark, after, T0 + dt.timedelta(days=20)))
    parts = evaluate.split(purchases, holdout_days=7)
    assert parts.cutoff == T0 + dt.timedelta(days=13)
    rows = {
        (r["method"], r["segment_id"]): r for r in evaluate.evaluate(parts, _segments(spark), 3, 2, "lift", 1)
    }
    third = 1 / math.log2(3)
    assert rows[("segment", 0)] == pytest.approx(
        {"method": "segment", "segment_id": 0, "users": 2, "hit_rate": 0.5, "ndcg": third / 2}
    )
    assert rows[("segment", 1)]["users"] == 1 and rows[("segment", 1)]["ndcg"] == pytest.approx(1.0)
    assert rows[("segment", None)]["users"] == 3
    assert rows[("segment", None)]["hit_rate"] == pytest.approx(2 / 3)
    assert rows[("segment", None)]["ndcg"] == pytest.approx((third + 1) / 3)
    assert rows[("popularity", None)]["hit_rate"] == pytest.approx(1 / 3)
    assert rows[("popularity", None)]["ndcg"] == pytest.approx(third / 3)


def test_without_new_purchases_each_method_reports_an_empty_overall_row(spark):
    after = [("a1", "x")]  # bought before: nothing new to recommend against
    purchases = _purchases(spark, BEFORE).unionByName(_purchases(spark, after, T0 + dt.timedelta(days=20)))
    rows = evaluate.evaluate(evaluate.split(purchases, 7), _segments(spark), 3, 2, "lift", 1)
    assert sorted(rows, key=lambda r: r["method"]) == [
        {"method": m, "segment_id": None, "users": 0, "hit_rate": None, "ndcg": None}
        for m in ("popularity", "segment")
    ]


def test_no_purchases_no_split(spark):
    empty = spark.createDataFrame([], "user_id string, key string, event_time timestamp")
    assert evaluate.split(empty, 7) is None


def test_bought_keeps_purchases_of_people_not_bots_cancellations_or_missing_items(spark):
    silver = spark.createDataFrame(
        [
            ("u1", "purchase", "x", "c", 2, False),
            ("u1", "view", "y", "c", None, False),  # not a purchase
            ("u2", "purchase", "x", "c", 1, True),  # a bot
            ("u3", "purchase", None, "c", 1, False),  # no item
            ("u4", "purchase", "z", None, -1, False),  # a cancellation
            ("u5", "purchase", "w", None, None, False),  # no quantity in this log
        ],
        "user_id string, event_type string, item_id string, category string, quantity int, is_bot boolean",
    ).withColumn("event_time", F.lit(T0))
    assert sorted((r.user_id, r.key) for r in lists.bought(silver, ["purchase"]).collect()) == [
        ("u1", "x"),
        ("u5", "w"),
    ]
    assert sorted((r.user_id, r.key) for r in lists.bought(silver, ["purchase"], "category").collect()) == [
        ("u1", "c"),
        ("u3", "c"),
    ]
