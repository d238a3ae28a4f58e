"""Ingest's DataFrame functions, one operation per test, on tiny in-memory frames (no tables)."""

import datetime as dt

import pytest

from segmentation.ingest.clean import Rule, bot_users, classify, flag_bots, sessionize, with_event_id

UTC = dt.UTC


def _t(minute: int, hour: int = 10, day: int = 1) -> dt.datetime:
    return dt.datetime(2026, 9, day, hour, minute, tzinfo=UTC)


def test_sessions_end_after_the_gap_and_given_ids_are_kept(spark):
    events = spark.createDataFrame(
        [
            ("a", _t(0), "e1", None),
            ("a", _t(20), "e2", None),  # 20 min later: same session
            ("a", _t(55), "e3", None),  # 35 min later: a new one
            ("b", _t(0), "e4", "given"),
        ],
        "user_id string, event_time timestamp, event_id string, session_id string",
    )
    rows = sessionize(events, 30).orderBy("event_id").collect()
    start_1, start_2 = int(_t(0).timestamp()), int(_t(55).timestamp())
    assert [(r.event_id, r.session_id, r.session_inferred) for r in rows] == [
        ("e1", f"a-{start_1}", True),
        ("e2", f"a-{start_1}", True),
        ("e3", f"a-{start_2}", True),
        ("e4", "given", False),
    ]


def test_bots_are_users_over_either_rate_with_every_reason_named(spark):
    rows = [("day", _t(m % 60, hour=8 + m // 60), None) for m in range(0, 600, 100)]  # 6 a day, 1 a minute
    rows += [("minute", _t(5), None) for _ in range(4)]  # 4 in one minute
    rows += [("human", _t(m), None) for m in (0, 30)]
    # a wholesale order: 40 lines of one invoice stamped with its minute, one action of a person
    rows += [("basket", _t(7), "invoice-1") for _ in range(40)]
    rows += [("basket", _t(7), "invoice-2")]
    events = spark.createDataFrame(
        [(u, t, s, f"e{i}") for i, (u, t, s) in enumerate(rows)],
        "user_id string, event_time timestamp, session_id string, event_id string",
    ).selectExpr("*", "to_date(event_time) AS event_date")
    bots = {r.user_id: r.bot_reason for r in bot_users(events, max_per_day=5, max_per_minute=3).collect()}
    assert bots == {"day": "events_per_day>5", "minute": "events_per_minute>3"}


def test_flags_join_every_event_of_a_bot(spark):
    events = spark.createDataFrame([("a", 1), ("a", 2), ("b", 3)], "user_id string, n int")
    bots = spark.createDataFrame([("a", "events_per_day>5")], "user_id string, bot_reason string")
    rows = flag_bots(events, bots).orderBy("n").collect()
    assert [(r.n, r.is_bot, r.bot_reason) for r in rows] == [
        (1, True, "events_per_day>5"),
        (2, True, "events_per_day>5"),
        (3, False, None),
    ]


@pytest.mark.parametrize(
    ("value", "user", "parse_error", "expected"),
    [
        (5.0, "u", None, None),  # breaks nothing
        (-1.0, "u", None, "negative"),  # the first quarantine rule it breaks
        (-1.0, None, None, "missing"),  # both broken: the earlier rule names it
        (None, "u", None, None),  # a null expectation passes, as in SQL CHECK constraints
        (-1.0, None, "malformed_record", "malformed_record"),  # a parse error comes first
    ],
)
def test_the_first_broken_quarantine_rule_is_the_reason(spark, value, user, parse_error, expected):
    rules = [
        Rule("missing", "user_id IS NOT NULL"),
        Rule("watched", "value < 3", action="warn"),  # warn rules never quarantine
        Rule("negative", "value >= 0"),
    ]
    frame = spark.createDataFrame(
        [(user, value, parse_error)], "user_id string, value double, parse_error string"
    )
    assert classify(frame, rules).head().reject_reason == expected


def test_event_ids_are_the_same_for_the_same_record_only(spark):
    frame = spark.createDataFrame([("r1",), ("r1",), ("r2",)], "raw_record string")
    ids = [r.event_id for r in with_event_id(frame).collect()]
    assert ids[0] == ids[1] != ids[2] and all(len(i) >= 16 for i in ids)
