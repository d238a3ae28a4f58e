"""Synthetic behaviour logs with planted segments, generated inside Spark tasks.

Each planted segment is a behaviour profile (event-type mix, category mix, hour of day, weekend share,
price level, activity, device); every user draws its own parameters around its segment's profile, so
segments overlap in any single feature and separate only jointly. A share of records is made dirty the
ways real logs are (see DIRTY_KINDS), and a few bot users emit thousands of events a day.

Generation is vectorized per partition of user ids (`mapInPandas` over `spark.range`), so it scales
with the cluster; the driver only plans the job.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from segmentation.config import GenerateConfig
from segmentation.tables import TYPED_EVENTS

# The generator plants no returns: its type mixes are over the first five canonical types.
EVENT_TYPES = TYPED_EVENTS[:5]
FUTURE_YEAR = dt.date.today().year + 5  # the year of the dirty records ingest must call future
CATEGORIES = (
    "electronics",
    "fashion",
    "home",
    "grocery",
    "books",
    "games",
    "beauty",
    "sports",
    "toys",
    "garden",
)
DEVICES = ("mobile", "desktop", "tablet")
TZ_OFFSETS = ("+00:00", "+01:00", "+02:00")
DIRTY_KINDS = (
    "malformed_record",
    "missing_user_id",
    "invalid_timestamp",
    "unknown_event_type",
    "negative_value",
    "duplicate",
    "future_timestamp",
)
OUTPUT_SCHEMA = "kind string, value string"


@dataclass(frozen=True)
class Profile:
    name: str
    share: float
    mean_events: float  # typical events over the whole period
    type_mix: tuple[float, ...]  # over EVENT_TYPES
    category_mix: tuple[float, ...]  # over CATEGORIES
    hour: float  # centre of the local hour-of-day distribution
    hour_spread: float
    weekend_share: float
    log_price: float  # log of the typical item price
    device_mix: tuple[float, ...]  # over DEVICES
    events_per_session: float


PROFILES = (
    Profile(
        "bargain_browsers",
        0.28,
        30,
        (0.70, 0.12, 0.10, 0.03, 0.05),
        (0.05, 0.35, 0.25, 0.05, 0.03, 0.02, 0.15, 0.04, 0.03, 0.03),
        20.5,
        2.0,
        0.30,
        2.8,
        (0.75, 0.15, 0.10),
        6,
    ),
    Profile(
        "big_spenders",
        0.18,
        22,
        (0.40, 0.10, 0.20, 0.25, 0.05),
        (0.40, 0.15, 0.15, 0.02, 0.03, 0.05, 0.05, 0.10, 0.02, 0.03),
        13.0,
        2.5,
        0.20,
        5.5,
        (0.30, 0.65, 0.05),
        4,
    ),
    Profile(
        "weekend_families",
        0.22,
        18,
        (0.50, 0.10, 0.18, 0.17, 0.05),
        (0.03, 0.08, 0.20, 0.35, 0.04, 0.03, 0.04, 0.05, 0.15, 0.03),
        11.0,
        2.5,
        0.80,
        3.5,
        (0.40, 0.20, 0.40),
        5,
    ),
    Profile(
        "night_gamers",
        0.16,
        40,
        (0.55, 0.20, 0.12, 0.08, 0.05),
        (0.10, 0.03, 0.02, 0.02, 0.08, 0.60, 0.02, 0.05, 0.05, 0.03),
        1.5,
        2.0,
        0.45,
        3.8,
        (0.80, 0.10, 0.10),
        8,
    ),
    Profile(
        "researchers",
        0.16,
        26,
        (0.40, 0.35, 0.06, 0.04, 0.15),
        (0.30, 0.03, 0.05, 0.02, 0.40, 0.05, 0.02, 0.08, 0.02, 0.03),
        16.0,
        3.0,
        0.25,
        4.3,
        (0.10, 0.85, 0.05),
        7,
    ),
)


def generate_logs(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """Raw log lines and the planted truth, one DataFrame.

    Output columns: `kind` ("event" for a raw JSON log line, "truth" for one JSON object per user with
    its planted `segment`, event counts and bot flag) and `value` (the line).
    """
    total_users = cfg.users + cfg.bot_users
    partitions = cfg.partitions or max(2, math.ceil(total_users / 10_000))
    ids = spark.range(0, total_users, numPartitions=partitions)
    params = _Params.from_config(cfg)
    return ids.mapInPandas(lambda batches: _generate(batches, params), OUTPUT_SCHEMA)


@dataclass(frozen=True)
class _Params:
    users: int
    days: int
    seed: int
    start: dt.date
    dirty_share: float

    @staticmethod
    def from_config(cfg: GenerateConfig) -> _Params:
        return _Params(cfg.users, cfg.days, cfg.seed, dt.date.fromisoformat(cfg.start_date), cfg.dirty_share)


def _generate(batches: Iterator[pd.DataFrame], params: _Params) -> Iterator[pd.DataFrame]:
    for batch in batches:
        ids = batch["id"].to_numpy()
        if len(ids) == 0:
            continue
        rng = np.random.default_rng([params.seed, int(ids[0]), len(ids)])
        regular = ids[ids < params.users]
        bots = ids[ids >= params.users]
        for frame in (_regular_users(regular, params, rng), _bot_users(bots, params, rng)):
            if frame is not None:
                yield frame


def _user_key(ids: np.ndarray) -> np.ndarray:
    return np.char.add("u", np.char.zfill(ids.astype(str), 7))


def _sample_rows(probs: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each event, draw an index from its user's probability row (inverse CDF, vectorized)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(rows)) * cum[rows, -1]
    return (u[:, None] > cum[rows]).sum(axis=1)


def _regular_users(ids: np.ndarray, params: _Params, rng: np.random.Generator) -> pd.DataFrame | None:
    n = len(ids)
    if n == 0:
        return None
    seg = rng.choice(
        len(PROFILES), size=n, p=np.array([p.share for p in PROFILES]) / sum(p.share for p in PROFILES)
    )
    prof = [PROFILES[s] for s in seg]

    def per_user(attr: str) -> np.ndarray:
        return np.array([getattr(p, attr) for p in prof], dtype=float)

    # Each user's own parameters, drawn around its segment's profile.
    type_mix = np.vstack([rng.dirichlet(np.array(p.type_mix) * 40) for p in prof])
    cat_mix = np.vstack([rng.dirichlet(np.array(p.category_mix) * 25 + 0.05) for p in prof])
    device_mix = np.vstack([rng.dirichlet(np.array(p.device_mix) * 20 + 0.05) for p in prof])
    hour = per_user("hour") + rng.normal(0, 1.5, n)
    hour_spread = per_user("hour_spread") * rng.uniform(0.8, 1.2, n)
    weekend = np.clip(per_user("weekend_share") + rng.normal(0, 0.08, n), 0.02, 0.98)
    log_price = per_user("log_price") + rng.normal(0, 0.35, n)
    n_events = np.maximum(
        1, np.round(rng.lognormal(np.log(per_user("mean_events") * params.days / 30), 0.5))
    ).astype(int)
    eps = np.maximum(1.0, per_user("events_per_session") * rng.uniform(0.7, 1.3, n))
    device = _sample_rows(device_mix, np.arange(n), rng)
    tz = rng.integers(0, len(TZ_OFFSETS), n)

    user_of = np.repeat(np.arange(n), n_events)
    rank = np.arange(len(user_of)) - np.repeat(np.cumsum(n_events) - n_events, n_events)
    session = rank // np.ceil(eps[user_of]).astype(int)
    session_key = user_of.astype(np.int64) * 100_000 + session
    uniq_sessions, session_index = np.unique(session_key, return_inverse=True)
    session_user = (uniq_sessions // 100_000).astype(int)

    # Session start: a weekend or weekday date by the user's weekend share, a local hour near its centre.
    days = np.array([params.start + dt.timedelta(days=i) for i in range(params.days)])
    is_weekend_day = np.array([d.weekday() >= 5 for d in days])
    weekend_days = np.flatnonzero(is_weekend_day)
    weekday_days = np.flatnonzero(~is_weekend_day)
    m = len(uniq_sessions)
    weekend_pool = weekend_days if len(weekend_days) else weekday_days
    weekday_pool = weekday_days if len(weekday_days) else weekend_days
    on_weekend = rng.random(m) < weekend[session_user]
    day_index = np.where(
        on_weekend,
        weekend_pool[rng.integers(0, len(weekend_pool), m)],
        weekday_pool[rng.integers(0, len(weekday_pool), m)],
    )
    local_hour = np.mod(rng.normal(hour[session_user], hour_spread[session_user]), 24)
    start_seconds = day_index * 86_400 + local_hour * 3600
    gaps = rng.exponential(90.0, len(user_of))
    offsets_in_session = pd.Series(gaps).groupby(session_index).cumsum().to_numpy()
    local_seconds = start_seconds[session_index] + offsets_in_session

    etype = _sample_rows(type_mix, user_of, rng)
    category = _sample_rows(cat_mix, user_of, rng)
    price = np.round(np.exp(log_price[user_of] + rng.normal(0, 0.4, len(user_of))), 2)
    has_value = np.isin(etype, [2, 3])  # cart, purchase carry an amount
    quantity = np.where(has_value, rng.integers(1, 4, len(user_of)), 0)

    base = np.datetime64(params.start.isoformat(), "s")
    local_time = base + local_seconds.astype("int64").astype("timedelta64[s]")
    time_text = pd.Series(np.datetime_as_string(local_time, unit="s")) + np.array(TZ_OFFSETS)[tz[user_of]]
    events = pd.DataFrame(
        {
            "user_id": _user_key(ids)[user_of],
            "event_time": time_text,
            "event_type": np.array(EVENT_TYPES)[etype],
            "item_id": np.char.add(
                np.char.add(np.array([c[:3] for c in CATEGORIES])[category], "-"),
                rng.integers(1000, 9999, len(user_of)).astype(str),
            ),
            "category": np.array(CATEGORIES)[category],
            "value": np.where(has_value, price, np.nan),
            "quantity": pd.Series(quantity, dtype="Int64").where(has_value),
            "device": np.array(DEVICES)[device[user_of]],
        }
    )
    lines, dirty_kind = _dirty(events, params, rng)
    valid = pd.Series(dirty_kind == "").groupby(user_of).sum().reindex(range(n), fill_value=0).to_numpy()
    truth = pd.DataFrame(
        {
            "user_id": _user_key(ids),
            "segment": [p.name for p in prof],
            "events": n_events,
            "valid_events": valid,
            "is_bot": False,
        }
    )
    return _frame(lines, truth)


def _bot_users(ids: np.ndarray, params: _Params, rng: np.random.Generator) -> pd.DataFrame | None:
    """Scrapers: thousands of views on one day, seconds apart, from one device."""
    if len(ids) == 0:
        return None
    n_events = rng.integers(1500, 3000, len(ids))
    user_of = np.repeat(np.arange(len(ids)), n_events)
    day = rng.integers(0, params.days, len(ids))[user_of]
    start = np.datetime64(params.start.isoformat(), "s") + (day * 86_400).astype("timedelta64[s]")
    seconds = (
        pd.Series(rng.exponential(8.0, len(user_of))).groupby(user_of).cumsum().to_numpy().astype("int64")
    )
    times = pd.Series(np.datetime_as_string(start + seconds.astype("timedelta64[s]"), unit="s")) + "+00:00"
    category = rng.integers(0, len(CATEGORIES), len(user_of))
    events = pd.DataFrame(
        {
            "user_id": _user_key(ids)[user_of],
            "event_time": times,
            "event_type": "view",
            "item_id": np.char.add("bot-", rng.integers(0, 99999, len(user_of)).astype(str)),
            "category": np.array(CATEGORIES)[category],
            "device": "desktop",
        }
    )
    lines = events.to_json(orient="records", lines=True).splitlines()
    truth = pd.DataFrame(
        {
            "user_id": _user_key(ids),
            "segment": "bot",
            "events": n_events,
            "valid_events": n_events,
            "is_bot": True,
        }
    )
    return _frame(lines, truth)


def _dirty(events: pd.DataFrame, params: _Params, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Serialize events as JSON lines, spoiling a share of them; returns the lines and each event's kind
    of dirt ("" for clean, "duplicate" for a clean event written twice)."""
    lines = events.to_json(orient="records", lines=True).splitlines()
    kind = np.full(len(lines), "", dtype=object)
    spoil = np.flatnonzero(rng.random(len(lines)) < params.dirty_share)
    kinds = rng.integers(0, len(DIRTY_KINDS), len(spoil))
    duplicates = []
    for row, k in zip(spoil, kinds, strict=True):
        what = DIRTY_KINDS[k]
        record = json.loads(lines[row])
        if what == "malformed_record":
            lines[row] = lines[row][: max(5, len(lines[row]) // 2)]
        elif what == "missing_user_id":
            record.pop("user_id")
        elif what == "invalid_timestamp":
            record["event_time"] = rng.choice(
                ["2026-13-45T25:61:00+00:00", "yesterday", "", "31/02/2026 10:00"]
            )
        elif what == "unknown_event_type":
            record["event_type"] = rng.choice(["hover", "scroll", "wishlist_zap"])
        elif what == "negative_value":
            record["event_type"] = "purchase"
            record["value"] = -abs(record.get("value") or 19.99)
            record["quantity"] = record.get("quantity") or 1
        elif what == "future_timestamp":
            record["event_time"] = f"{FUTURE_YEAR}-" + record["event_time"][5:]
        if what not in ("malformed_record", "duplicate"):
            lines[row] = json.dumps(record, separators=(",", ":"))
        if what == "duplicate":
            duplicates.append(lines[row])
        kind[row] = what
    return lines + duplicates, np.where(kind == "duplicate", "", kind)


def _frame(lines: list[str], truth: pd.DataFrame) -> pd.DataFrame:
    truth_lines = truth.to_json(orient="records", lines=True).splitlines()
    return pd.DataFrame(
        {"kind": ["event"] * len(lines) + ["truth"] * len(truth_lines), "value": lines + truth_lines}
    )
