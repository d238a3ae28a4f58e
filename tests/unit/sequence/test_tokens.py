"""Each user's last events as tokens: codes per field, the latest events kept in time order, padding."""

import datetime as dt

from segmentation.sequence.tokens import FIELDS, cardinalities, user_sequences

T0 = dt.datetime(2026, 1, 1, 10, 0, 0)


def _events(spark, rows):
    return spark.createDataFrame(
        rows,
        "user_id string, event_time timestamp, event_type string, category string, value double, event_id string",
    )


def _by_user(frame):
    return {r.user_id: r for r in frame.collect()}


def test_codes_of_each_field(spark):
    events = _events(
        spark,
        [
            ("a", T0, "view", "games", None, "e1"),
            ("a", T0 + dt.timedelta(seconds=30), "purchase", "books", 12.0, "e2"),
            ("a", T0 + dt.timedelta(days=2, hours=1), "cart", None, 1500.0, "e3"),
        ],
    )
    a = _by_user(user_sequences(events, ("games",), 4))["a"]
    width = len(FIELDS)
    assert a.events == 3 and len(a.sequence) == 4 * width
    # type (view=1, purchase=4, cart=3), category (games=1, other=2, none=3), hour + 1, gap bucket
    # (first=1, <1 min=2, <1 week=7), value bucket (none=1, 10-99: 3, 1000-9999: 5), position eighth
    assert a.sequence[:width] == [1, 1, 11, 1, 1, 1]
    assert a.sequence[width : 2 * width] == [4, 2, 11, 2, 3, 3]
    assert a.sequence[2 * width : 3 * width] == [3, 3, 12, 7, 5, 6]
    assert a.sequence[3 * width :] == [0] * width  # padding after the last event
    assert cardinalities(("games",)) == (7, 3, 24, 8, 8, 8)


def test_only_the_latest_events_are_kept_in_time_order(spark):
    rows = [
        ("b", T0 + dt.timedelta(hours=i), "view" if i < 5 else "purchase", None, None, f"e{i}")
        for i in range(8)
    ]
    b = _by_user(user_sequences(_events(spark, rows), (), 3))["b"]
    width = len(FIELDS)
    assert b.events == 3
    assert [b.sequence[i * width] for i in range(3)] == [4, 4, 4]  # the three purchases, the latest
    assert [b.sequence[i * width + 2] for i in range(3)] == [16, 17, 18]  # hours 15-17, in order
    assert b.sequence[width + 3] == 5  # an hour after the previous event: the <6 h bucket
