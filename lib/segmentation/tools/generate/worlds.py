"""A family of synthetic worlds for the quality lab (`segment bench --quality`): behaviour logs with
planted segments, drawn from a seed, deliberately unlike `segment generate`'s one world.

Each seed draws a whole world: how many segments (3-12), their sizes (the smallest 1-5% of users), how
far apart they are (easy to hard), which behaviour families carry no segment signal at all (irrelevant
features), how heavy-tailed activity is, the event schema (field names, nesting, time format, the raw
event-type vocabulary, which optional fields exist), and its kind: `profile` worlds whose segments
differ in what users do (event, category, device, price, time-of-day mixes), and `sequence` worlds
whose segments do the same things in the same proportions and differ only in order and timing (a burst
of sessions, steady visits, browsing for days and then buying, buying at once and browsing after).

Worlds are small (a few thousand users) and generated with numpy on the driver: this is a measurement
tool, not the product. Each returns its raw JSON lines, the planted truth and the `input` config that
maps its schema onto the canonical events.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TYPES = ("view", "search", "cart", "purchase", "rate")
SYNONYMS = {  # raw vocabularies a world may use; every value is one the default input.event_types maps
    "view": ("view", "page_view", "detail"),
    "search": ("search", "query"),
    "cart": ("cart", "add_to_cart"),
    "purchase": ("purchase", "order", "transaction"),
    "rate": ("rate", "review"),
}
FAMILIES = ("type", "category", "device", "hour", "weekend", "price", "activity")
SEQUENCE_PATTERNS = ("burst", "steady", "browse_then_buy", "buy_then_browse")
START = dt.date(2026, 6, 1)
DAYS = 30


@dataclass(frozen=True)
class Schema:
    user: str  # field (dotted: nested object) holding the user id
    time: str
    time_format: str  # iso | epoch_ms | spark pattern
    type: str
    vocabulary: dict[str, str]  # canonical type -> raw value written
    category: str | None
    value: str | None
    device: str | None
    quantity: str | None


@dataclass(frozen=True)
class World:
    seed: int
    kind: str  # profile | sequence
    k: int
    users: int
    shares: tuple[float, ...]
    separation: float  # spread of segment profiles, in units of the within-segment spread
    irrelevant: tuple[str, ...]  # families drawn per user, independent of the segment
    activity_sigma: float  # log-normal sigma of events per user
    categories: int
    schema: Schema

    def describe(self) -> dict:
        return {
            "seed": self.seed,
            "kind": self.kind,
            "k": self.k,
            "users": self.users,
            "smallest_share": round(min(self.shares), 4),
            "separation": round(self.separation, 3),
            "irrelevant": list(self.irrelevant),
            "activity_sigma": round(self.activity_sigma, 3),
            "schema": {
                "time_format": self.schema.time_format,
                "missing": [
                    name
                    for name in ("category", "value", "device", "quantity")
                    if getattr(self.schema, name) is None
                ],
                "nested": any(
                    "." in (f or "") for f in (self.schema.user, self.schema.device, self.schema.category)
                ),
            },
        }

    def input_config(self, path: Path) -> dict:
        """The `input` config section that reads this world's logs at `path`."""
        s = self.schema
        mapping = {"user_id": s.user, "event_time": s.time, "event_type": s.type}
        for canonical, source in (("category", s.category), ("value", s.value), ("device", s.device)):
            if source:
                mapping[canonical] = source
        if s.quantity:
            mapping["quantity"] = s.quantity
        config = {"path": str(path), "format": "json", "mapping": mapping}
        if s.time_format != "iso":
            config["time_format"] = s.time_format
        return config


def draw_world(seed: int, users: int = 3000) -> World:
    """The world of `seed`: every property drawn from the family's ranges."""
    rng = np.random.default_rng([7919, seed])
    kind = "sequence" if rng.random() < 0.2 else "profile"
    k = int(rng.integers(3, 5)) if kind == "sequence" else int(rng.integers(3, 13))
    smallest = rng.uniform(0.01, 0.05)
    rest = rng.dirichlet(np.full(k - 1, 3.0)) * (1 - smallest)
    rest = np.maximum(rest, smallest)
    shares = np.concatenate([[smallest], rest * (1 - smallest) / rest.sum()])
    irrelevant = tuple(sorted(rng.choice(FAMILIES[1:], size=int(rng.integers(0, 3)), replace=False).tolist()))
    return World(
        seed=seed,
        kind=kind,
        k=k,
        users=users,
        shares=tuple(float(s) for s in rng.permutation(shares)),
        separation=float(rng.uniform(1.5, 4.0)),
        irrelevant=irrelevant if kind == "profile" else (),
        activity_sigma=float(rng.uniform(0.3, 1.1)),
        categories=int(rng.integers(5, 16)),
        schema=_draw_schema(rng),
    )


def _draw_schema(rng: np.random.Generator) -> Schema:
    def pick(options):
        return options[int(rng.integers(0, len(options)))]

    return Schema(
        user=pick(("user_id", "uid", "customer.id", "visitor")),
        time=pick(("event_time", "ts", "timestamp")),
        time_format=pick(("iso", "epoch_ms", "yyyy-MM-dd HH:mm:ss")),
        type=pick(("event_type", "action", "event.name")),
        vocabulary={t: pick(SYNONYMS[t]) for t in TYPES},
        category=None if rng.random() < 0.15 else pick(("category", "cat", "item.category")),
        value=None if rng.random() < 0.15 else pick(("value", "price", "amount")),
        device=None if rng.random() < 0.3 else pick(("device", "context.device", "platform")),
        quantity=None if rng.random() < 0.5 else pick(("quantity", "qty")),
    )


def generate(world: World) -> tuple[list[str], pd.DataFrame]:
    """The world's raw JSON lines (one per event) and its truth (user_id, segment)."""
    rng = np.random.default_rng([104729, world.seed])
    n = world.users
    segment = rng.choice(world.k, size=n, p=np.array(world.shares))
    events = (
        _profile_events(world, segment, rng)
        if world.kind == "profile"
        else _sequence_events(world, segment, rng)
    )
    user_ids = np.char.add("c", np.char.zfill(rng.permutation(n).astype(str), 6))
    events["user"] = user_ids[events["user"]]
    truth = pd.DataFrame({"user_id": user_ids, "segment": [f"s{s}" for s in segment]})
    return _render(events, world.schema), truth


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _draw_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of `probs` (rows x options), by inverse CDF."""
    cum = np.cumsum(probs, axis=1)
    return (rng.random(len(probs))[:, None] * cum[:, -1:] > cum).sum(axis=1)


def _per_user(world: World, family: str, segment_values: np.ndarray, user_values: np.ndarray, segment):
    """A family's per-user offset from the world's base: its segment's offset plus the user's own
    deviation, or only the user's when the family is irrelevant in this world."""
    if family in world.irrelevant:
        return user_values
    return segment_values[segment] + user_values


def _profile_events(world: World, segment: np.ndarray, rng: np.random.Generator) -> dict:
    k, n, sep = world.k, len(segment), world.separation
    base_types = np.log(np.array([0.55, 0.15, 0.15, 0.1, 0.05]))
    type_logits = _per_user(
        world, "type", base_types + rng.normal(0, 0.7 * sep, (k, 5)), rng.normal(0, 0.4, (n, 5)), segment
    )
    cat_logits = _per_user(
        world,
        "category",
        rng.normal(0, sep, (k, world.categories)),
        rng.normal(0, 0.6, (n, world.categories)),
        segment,
    )
    device_logits = _per_user(
        world, "device", rng.normal(0, sep, (k, 3)), rng.normal(0, 0.6, (n, 3)), segment
    )
    hour = 14 + _per_user(world, "hour", rng.normal(0, 2.5 * sep, k), rng.normal(0, 2.0, n), segment)
    weekend = -0.8 + _per_user(world, "weekend", rng.normal(0, 0.6 * sep, k), rng.normal(0, 0.4, n), segment)
    log_price = 3.5 + _per_user(world, "price", rng.normal(0, 0.5 * sep, k), rng.normal(0, 0.35, n), segment)
    log_events = np.log(20) + _per_user(world, "activity", rng.normal(0, 0.4 * sep, k), np.zeros(n), segment)
    counts = np.clip(np.round(np.exp(log_events + rng.normal(0, world.activity_sigma, n))), 1, 1500).astype(
        int
    )
    user = np.repeat(np.arange(n), counts)
    m = len(user)
    etype = _draw_rows(_softmax(type_logits)[user], rng)
    category = _draw_rows(_softmax(cat_logits)[user], rng)
    device = _draw_rows(_softmax(device_logits)[user], rng)  # per event: users switch devices
    # sessions of about 5 events on days drawn by the user's weekend propensity, near its hour
    rank = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
    session = user.astype(np.int64) * 10_000 + rank // 5
    _, session_index = np.unique(session, return_inverse=True)
    sessions = session_index.max() + 1
    session_user = np.zeros(sessions, dtype=int)
    session_user[session_index] = user
    weekend_p = 1 / (1 + np.exp(-weekend[session_user]))
    day = _draw_day(rng.random(sessions) < weekend_p, rng)
    start = day * 86_400 + np.mod(rng.normal(hour[session_user], 1.5), 24) * 3600
    within = pd.Series(rng.exponential(120.0, m)).groupby(session_index).cumsum().to_numpy()
    seconds = start[session_index] + within
    price = np.exp(log_price[user] + rng.normal(0, 0.3, m))
    return _events(user, seconds, etype, category, device, price)


def _events(user, seconds, etype, category, device, price) -> dict:
    """One world's events as columns (event order): what `_render` writes in the world's schema."""
    return {
        "user": user,
        "seconds": seconds,
        "type": etype,
        "category": category,
        "device": device,
        "price": price,
    }


def _draw_day(weekend: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    days = np.arange(DAYS)
    is_weekend = np.array([(START + dt.timedelta(days=int(d))).weekday() >= 5 for d in days])
    pool_weekend, pool_weekday = days[is_weekend], days[~is_weekend]
    return np.where(
        weekend,
        pool_weekend[rng.integers(0, len(pool_weekend), len(weekend))],
        pool_weekday[rng.integers(0, len(pool_weekday), len(weekend))],
    )


def _sequence_events(world: World, segment: np.ndarray, rng: np.random.Generator) -> dict:
    """Every user draws types, categories, devices and prices from the same world-wide mixes; segments
    differ only in when events happen and in which order the types come."""
    n = len(segment)
    patterns = rng.permutation(SEQUENCE_PATTERNS)[: world.k]
    counts = np.clip(np.round(np.exp(np.log(16) + rng.normal(0, world.activity_sigma, n))), 4, 1500).astype(
        int
    )
    user = np.repeat(np.arange(n), counts)
    m = len(user)
    rank = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
    share = rank / np.maximum(counts[user] - 1, 1)  # position of the event in the user's history, 0..1
    pattern = patterns[segment][user]
    hour = rng.uniform(8, 22, n)[user]
    first_day = rng.integers(0, DAYS - 20, n)[user]
    # when: a burst packs the history into two evenings; every other pattern spreads it over ~20 days
    burst = pattern == "burst"
    day = np.where(burst, first_day + (share > 0.5), first_day + np.floor(share * 19.99))
    seconds = day * 86_400 + hour * 3600 + np.where(burst, share * 5400, rng.uniform(0, 3600, m))
    # which: the same per-user mix of types for everyone; the order depends on the pattern
    mix = rng.dirichlet(np.array([55.0, 15, 15, 10, 5]), n)
    etype = _draw_rows(mix[user], rng)
    buying = np.isin(etype, (2, 3))
    order_key = np.where(
        pattern == "browse_then_buy", buying, np.where(pattern == "buy_then_browse", ~buying, 0.5)
    )
    order = np.lexsort((rng.random(m), order_key, user))
    etype = etype[order]
    category = _draw_rows(np.tile(_softmax(rng.normal(0, 1, world.categories)), (m, 1)), rng)
    device = _draw_rows(np.tile(np.array([0.6, 0.3, 0.1]), (m, 1)), rng)
    price = np.exp(3.5 + rng.normal(0, 0.5, m))
    return _events(user, seconds, etype, category, device, price)


def _render(events: dict, schema: Schema) -> list[str]:
    """JSON lines in the world's schema (dotted names become nested objects)."""
    base = np.datetime64(START.isoformat(), "s")
    when = base + events["seconds"].astype("int64").astype("timedelta64[s]")
    if schema.time_format == "epoch_ms":
        times = (when.astype("int64") * 1000).tolist()
    elif schema.time_format == "iso":
        times = np.char.add(np.datetime_as_string(when, unit="s"), "+00:00").tolist()
    else:
        times = np.char.replace(np.datetime_as_string(when, unit="s"), "T", " ").tolist()
    vocabulary = np.array([schema.vocabulary[t] for t in TYPES])
    columns = {
        schema.user: events["user"].tolist(),
        schema.time: times,
        schema.type: vocabulary[events["type"]].tolist(),
    }
    buying = np.isin(events["type"], (2, 3))
    if schema.category:
        columns[schema.category] = np.char.add("cat", events["category"].astype(str)).tolist()
    if schema.device:
        columns[schema.device] = np.array(["mobile", "desktop", "tablet"])[events["device"]].tolist()
    if schema.value:
        columns[schema.value] = np.where(buying, np.round(events["price"], 2), np.nan).tolist()
    if schema.quantity:
        columns[schema.quantity] = np.where(
            buying, 1 + (events["price"] * 7 % 3).astype(int), np.nan
        ).tolist()
    names = list(columns)
    lines = []
    for values in zip(*(columns[name] for name in names), strict=True):
        record: dict = {}
        for name, value in zip(names, values, strict=True):
            if isinstance(value, float) and np.isnan(value):
                continue  # an optional field absent on this event
            node = record
            *parents, leaf = name.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        lines.append(json.dumps(record, separators=(",", ":")))
    return lines


def write(world: World, root: Path) -> tuple[Path, Path]:
    """Write the world's logs and truth under `root`: (raw directory, truth directory)."""
    lines, truth = generate(world)
    raw, truth_dir = root / "raw", root / "truth"
    raw.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    (raw / "events.json").write_text("\n".join(lines) + "\n")
    truth.to_json(truth_dir / "truth.json", orient="records", lines=True)
    (root / "world.json").write_text(json.dumps(world.describe(), indent=2))
    return raw, truth_dir
