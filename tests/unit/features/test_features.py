"""Feature values checked by hand on tiny event sets."""

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import functions as F

from segmentation.features import stage as features
from segmentation.features.aggregates import feature_specs
from segmentation.features.dictionary import render
from segmentation.features.scaling import Scaler, fit_scaler
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import EVENTS_SILVER, SILVER_COLUMNS, USER_FEATURES
from tests.conftest import REPO

SILVER_SCHEMA = (
    "event_id string, user_id string, event_time timestamp, event_type string, item_id string, category string, "
    "value double, quantity long, session_id string, device string, session_inferred boolean, is_bot boolean, "
    "bot_reason string, source_file string, run_id string, event_date date"
)
UTC = dt.UTC


def write_silver(spark, store, events: list[dict]):
    rows = []
    for i, e in enumerate(events):
        row = {c: None for c in SILVER_COLUMNS}
        row.update(event_id=f"e{i}", session_inferred=False, is_bot=False, source_file="f", run_id="r")
        row.update(e)
        row["event_date"] = row["event_time"].date()
        rows.append(tuple(row[c] for c in SILVER_COLUMNS))
    store.overwrite(spark.createDataFrame(rows, SILVER_SCHEMA), EVENTS_SILVER, ["event_date"])


def at(day, hour, minute=0):
    return dt.datetime(2026, 9, day, hour, minute, tzinfo=UTC)


SHOP = [
    # u1: a Saturday morning session (view, cart, purchase of books on mobile), a Monday evening view.
    dict(
        user_id="u1",
        event_time=at(5, 10),
        event_type="view",
        category="books",
        device="mobile",
        session_id="s1",
    ),
    dict(
        user_id="u1",
        event_time=at(5, 10, 10),
        event_type="cart",
        category="books",
        device="mobile",
        value=20.0,
        quantity=1,
        session_id="s1",
    ),
    dict(
        user_id="u1",
        event_time=at(5, 10, 20),
        event_type="purchase",
        category="books",
        device="mobile",
        value=20.0,
        quantity=2,
        session_id="s1",
    ),
    dict(
        user_id="u1",
        event_time=at(7, 20),
        event_type="view",
        category="toys",
        device="desktop",
        session_id="s2",
    ),
    # u2: a Sunday night search and a Monday evening view, both games.
    dict(
        user_id="u2",
        event_time=at(6, 2),
        event_type="search",
        category="games",
        device="mobile",
        session_id="s3",
    ),
    dict(
        user_id="u2",
        event_time=at(7, 22),
        event_type="view",
        category="games",
        device="mobile",
        session_id="s4",
    ),
]


@pytest.fixture
def store(spark, cfg):
    return open_store(spark, cfg.storage)


def test_every_family_by_hand(spark, cfg, store):
    write_silver(spark, store, SHOP)
    cfg.features.top_categories = 2
    result = features.run(StageContext.create(spark, cfg, "f1"))
    assert result.rows_out == 2
    row = store.read(USER_FEATURES).where("user_id = 'u1'").head().asDict()
    expected = {
        "n_events": 4,
        "active_days": 2,
        "n_sessions": 2,
        "events_per_session": 2,
        "tenure_days": 2 + 10 / 24,
        "recency_days": 2 / 24,
        "mean_gap_hours": 58 / 3,
        "mean_session_gap_days": 2 + 10 / 24,
        "share_view": 0.5,
        "share_search": 0,
        "share_cart": 0.25,
        "share_purchase": 0.25,
        "share_rate": 0,
        "cart_per_view": 0.5,
        "purchase_per_view": 0.5,
        "purchase_per_cart": 1.0,
        "purchase_count": 1,
        "cart_position": 10 / (58 * 60),  # ten minutes into a span of 58 hours
        "purchase_position": 20 / (58 * 60),
        "purchase_total": 20,
        "purchase_mean": 20,
        "quantity_total": 2,
        "share_night": 0,
        "share_morning": 0.75,
        "share_afternoon": 0,
        "share_evening": 0.25,
        "weekend_share": 0.75,
        "share_cat_books": 0.75,
        "share_cat_games": 0,
        "share_cat_other": 0.25,
        "category_entropy": -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)),
        "share_device_mobile": 0.75,
        "share_device_desktop": 0.25,
        "share_device_other": 0,
    }
    assert {k: pytest.approx(v) for k, v in expected.items()} == {k: row[k] for k in expected}
    assert row["as_of"] == dt.datetime(2026, 9, 7, 22, 0)  # default: the latest event in silver
    assert "share_cat_toys" not in row  # not in the global top 2
    u2 = store.read(USER_FEATURES).where("user_id = 'u2'").head()
    assert (u2.cart_position, u2.purchase_position) == (0.5, 0.5)  # neither carts nor purchases


def test_returns_are_a_share_and_an_amount(spark, cfg, store):
    refund = dict(user_id="u2", event_time=at(7, 23), event_type="return", category="games", value=15.0)
    write_silver(spark, store, [*SHOP, refund])
    features.run(StageContext.create(spark, cfg, "f-returns"))
    rows = {r.user_id: r for r in store.read(USER_FEATURES).collect()}
    assert (rows["u2"].share_return, rows["u2"].return_total) == (pytest.approx(1 / 3), 15.0)
    assert (rows["u1"].share_return, rows["u1"].return_total) == (0.0, 0.0)
    assert rows["u2"].purchase_total == 0  # a return is not a purchase


def test_missing_fields_skip_their_families(spark, cfg, store):
    purchases = [
        dict(user_id=u, event_time=at(d, 12), event_type="purchase", value=v, session_id=f"{u}{d}")
        for u, d, v in (("a", 1, 5.0), ("a", 3, 7.0), ("b", 2, 50.0), ("c", 4, 1.0))
    ]
    write_silver(spark, store, purchases)
    features.run(StageContext.create(spark, cfg, "f2"))
    columns = set(store.read(USER_FEATURES).columns)
    assert {"purchase_total", "purchase_mean", "recency_days", "weekend_share"} <= columns
    assert not {
        c for c in columns if c.startswith(("share_cat", "share_device", "category_entropy", "quantity"))
    }
    scaler = Scaler.load(cfg.paths.scaling("f2"))
    # Everyone only purchases: the event-type shares are constant, dropped and recorded.
    assert {"share_purchase", "share_view"} <= set(scaler.dropped_constant)
    assert "share_purchase" not in scaler.feature_names
    width = store.read(USER_FEATURES).select(F.size("features")).distinct().collect()
    assert [r[0] for r in width] == [len(scaler.feature_names)]


def test_scaling_statistics_round_trip_and_are_reused(spark, cfg, store):
    write_silver(spark, store, SHOP)
    features.run(StageContext.create(spark, cfg, "f3"))
    scaler = Scaler.load(cfg.paths.scaling("f3"))
    scaler.save(cfg.paths.scaling("copy"))
    assert Scaler.load(cfg.paths.scaling("copy")) == scaler
    assert scaler.vocabulary["categories"] and scaler.vocabulary["devices"]
    # the snapshot's rules travel with it: assign applies them whatever the config says later
    assert scaler.rules == {"lookback_days": None, "min_events": 1, "timezone": "UTC"}
    later = dataclasses.replace(cfg.features, min_events=9, timezone="Asia/Tokyo")
    assert features.snapshot_rules(later, scaler) == dataclasses.replace(later, min_events=1, timezone="UTC")
    table = store.read(USER_FEATURES)
    again = table.select("user_id", "features", scaler.transform().alias("recomputed")).collect()
    for r in again:
        assert r.features == pytest.approx(r.recomputed)
    means = [sum(vals) / len(again) for vals in zip(*[r.features for r in again], strict=True)]
    assert means == pytest.approx([0.0] * len(means), abs=1e-6)  # standardized on this snapshot


def test_net_of_volume_the_activity_features_are_uncorrelated_with_the_event_count(spark, cfg, store):
    """features.partial_out_volume: n_events counts once; every other activity feature enters the array
    as its residual on n_events, while the table's plain columns and the other families stay as they were."""
    rng = np.random.default_rng(5)
    events = []
    for u in range(40):
        days = int(rng.integers(1, 6))  # activity that grows with the count, but not only with it
        for i in range(int(rng.integers(1, 30))):
            day = 1 + i % days
            events.append(
                dict(
                    user_id=f"u{u}",
                    event_time=at(day, 8 + i % 12, i % 60),
                    event_type=("view", "cart", "purchase")[i % 3],
                    category="books",
                    device="mobile",
                    value=5.0 if i % 3 == 2 else None,
                    session_id=f"s{u}-{day}",
                )
            )
    write_silver(spark, store, events)
    cfg.features.partial_out_volume = False
    features.run(StageContext.create(spark, cfg, "plain"))
    plain = {r.user_id: r.asDict() for r in store.read(USER_FEATURES).collect()}
    cfg.features.partial_out_volume = True
    features.run(StageContext.create(spark, cfg, "netted"))
    netted = {r.user_id: r.asDict() for r in store.read(USER_FEATURES).collect()}
    scaler = Scaler.load(cfg.paths.scaling("netted"))
    activity = [s.name for s in feature_specs() if s.family == "activity" and s.name in scaler.feature_names]
    assert set(scaler.partial_out) == set(activity) - {"n_events"} and scaler.volume == "n_events"
    assert Scaler.load(cfg.paths.scaling("plain")).partial_out == {}
    users = sorted(plain)
    columns = {name: i for i, name in enumerate(scaler.feature_names)}
    matrix = lambda rows: np.array([rows[u]["features"] for u in users])  # noqa: E731
    before, after = matrix(plain), matrix(netted)
    volume = after[:, columns["n_events"]]
    for name, i in columns.items():
        assert all(plain[u][name] == netted[u][name] for u in users)  # the table's columns are plain values
        if name in scaler.partial_out:
            assert abs(np.corrcoef(before[:, i], volume)[0, 1]) > 0.1  # there was volume to take out
            assert abs(np.corrcoef(after[:, i], volume)[0, 1]) < 1e-3
            assert after[:, i] == pytest.approx(before[:, i] - scaler.partial_out[name] * volume, abs=1e-5)
        else:
            assert after[:, i] == pytest.approx(before[:, i], abs=1e-6)


def test_which_features_enter_net_of_volume():
    """The activity family with features.partial_out_volume; the spend totals as well (never the
    per-purchase mean) with features.partial_out_spend; nothing with netting off."""
    specs = feature_specs()
    activity = {s.name for s in specs if s.family == "activity"}
    on = features.FeaturesConfig()
    assert set(features.volume_netted(specs, on)) == activity
    spend = {"purchase_count", "purchase_total", "return_total", "quantity_total"}
    with_spend = dataclasses.replace(on, partial_out_spend=True)
    assert set(features.volume_netted(specs, with_spend)) == activity | spend
    assert "purchase_mean" in {s.name for s in specs}
    assert features.volume_netted(specs, dataclasses.replace(on, partial_out_volume=False)) == []


def test_net_of_volume_with_a_constant_feature_or_volume(spark):
    """A constant activity feature is dropped and a constant volume nets nothing, without the division
    by zero that Spark's corr raises there under ANSI mode."""
    users = spark.createDataFrame(
        [(float(n), 3.0, float(n % 3)) for n in range(1, 9)],
        "n_events double, active_days double, n_sessions double",
    )
    netted = ["active_days", "n_sessions"]
    scaler = fit_scaler(
        users, ["n_events", "active_days", "n_sessions"], [True] * 3, 4.0, "r", partial_out=netted
    )
    assert scaler.dropped_constant == ["active_days"] and set(scaler.partial_out) == {"n_sessions"}
    expected = np.corrcoef(np.log1p(np.arange(1, 9)), np.log1p(np.arange(1, 9) % 3))[0, 1]
    assert scaler.partial_out["n_sessions"] == pytest.approx(expected, abs=1e-9)
    still = fit_scaler(
        users.withColumn("n_events", F.lit(2.0)),
        ["n_events", "n_sessions"],
        [True, True],
        4.0,
        "r",
        partial_out=["n_sessions"],
    )
    assert still.dropped_constant == ["n_events"] and still.partial_out == {}


def test_lookback_and_min_events_exclude_users(spark, cfg, store):
    write_silver(
        spark, store, SHOP + [dict(user_id="u3", event_time=at(1, 9), event_type="view", session_id="x")]
    )
    cfg.features.lookback_days = 3
    cfg.features.min_events = 2
    result = features.run(StageContext.create(spark, cfg, "f4"))
    assert {r.user_id for r in store.read(USER_FEATURES).collect()} == {"u1", "u2"}
    assert result.users_excluded == 1


def test_a_user_with_any_bot_event_is_left_out_of_features_and_vocabulary(spark, cfg, store):
    bot = [
        dict(user_id="u9", event_time=at(2 + i, 3), event_type="view", category="spam", session_id=f"b{i}")
        for i in range(5)
    ]
    bot[0]["is_bot"] = True  # one flagged event is enough
    write_silver(spark, store, SHOP + bot)
    result = features.run(StageContext.create(spark, cfg, "f5"))
    assert {r.user_id for r in store.read(USER_FEATURES).collect()} == {"u1", "u2"}
    assert result.bot_users_excluded == 1 and result.users_excluded == 1
    assert list(result.phase_seconds) == [
        "as_of and window",
        "bot users",
        "vocabulary",
        "per-user aggregation and scaling statistics",
        "write user_features",
        "counts",
    ]
    assert "spam" not in Scaler.load(cfg.paths.scaling("f5")).vocabulary["categories"]


def test_feature_dictionary_in_the_docs_is_current():
    assert (REPO / "docs" / "features.md").read_text() == render(), (
        "run: python -m segmentation.features.dictionary > docs/features.md"
    )
