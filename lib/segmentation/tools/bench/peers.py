"""The single-node peers each product stage is measured against, on the same data and cores.

They are deliberately plain: what a data scientist would write on one machine with torch, scikit-learn
or pyarrow. Their inputs are already in memory where the peer would hold them in memory anyway.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segmentation.features.aggregates import HOUR_BUCKETS, TYPE_NAMES


def torch_embed_seconds(model_path: str, rows: np.ndarray, batch_size: int) -> float:
    """Seconds for single-process torch to compute what the embed step writes (embedding and
    reconstruction error, the same `encode_batch`) for `rows` held in memory, in batches: the limit."""
    import torch

    from segmentation.embed.encoder import encode_batch
    from segmentation.train.model import load

    net, _ = load(model_path)
    torch.set_num_threads(_cores())
    started = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        encode_batch(net, rows[i : i + batch_size])
    return time.perf_counter() - started


def torch_train_epoch_seconds(
    rows: np.ndarray,
    hidden: tuple[int, ...],
    dim: int,
    batch_size: int,
    lr: float,
    epochs: int,
    threads: int | None = None,
) -> list[float]:
    """Per-epoch seconds of a single-process torch loop training the same autoencoder on `rows`, with
    `threads` (default: every core)."""
    import torch

    from segmentation.train.model import Autoencoder

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or _cores())
    torch.manual_seed(0)
    net = Autoencoder(rows.shape[1], hidden, dim)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    data = torch.from_numpy(rows)
    loss_fn = torch.nn.MSELoss()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(data))
        for i in range(0, len(data), batch_size):
            x = data[order[i : i + batch_size]]
            optimizer.zero_grad()
            loss_fn(net(x), x).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    torch.set_num_threads(previous)
    return seconds


def sklearn_kmeans(points: np.ndarray, k: int, seed: int, max_iter: int) -> tuple[float, float]:
    """(seconds, inertia) of scikit-learn KMeans (k-means++, one init) on `points`."""
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    model = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=max_iter).fit(points)
    return time.perf_counter() - started, float(model.inertia_)


def pyarrow_user_totals(events: pa.Table, categories: list[str], devices: list[str]) -> pa.Table:
    """The per-user totals every feature is derived from (counts by type, hour bucket, weekend,
    category and device, spend, quantity, first/last time, distinct days and sessions, category
    entropy), and the shares of events they imply, with pyarrow group-bys: the single-node peer of
    the features stage's aggregation over the same silver events."""
    times = events["event_time"]  # the benchmark runs with features.timezone = UTC
    hour = pc.hour(times)
    weekday = pc.day_of_week(times)  # Monday = 0
    columns = {
        "user_id": events["user_id"],
        "event_date": events["event_date"],
        "session_id": events["session_id"],
        "ts": pc.divide(pc.cast(pc.cast(events["event_time"], pa.timestamp("us")), pa.int64()), 1_000_000),
        "n": pa.array(np.ones(len(events), dtype=np.int64)),
        "weekend": pc.cast(pc.greater_equal(weekday, 5), pa.int64()),
    }
    purchase = pc.equal(events["event_type"], "purchase")
    for t in TYPE_NAMES:
        columns[f"n_{t}"] = pc.cast(pc.equal(events["event_type"], t), pa.int64())
    columns["spend"] = pc.if_else(purchase, events["value"], None)
    columns["qty"] = pc.if_else(purchase, events["quantity"], None)
    for name, lo, hi in HOUR_BUCKETS:
        columns[f"n_hour_{name}"] = pc.cast(
            pc.and_(pc.greater_equal(hour, lo), pc.less(hour, hi)), pa.int64()
        )
    for i, value in enumerate(categories):
        columns[f"n_cat_{i}"] = pc.cast(pc.fill_null(pc.equal(events["category"], value), False), pa.int64())
    for i, value in enumerate(devices):
        columns[f"n_device_{i}"] = pc.cast(pc.fill_null(pc.equal(events["device"], value), False), pa.int64())
    table = pa.table(columns)
    summed = [c for c in table.column_names if c.startswith("n") or c in ("spend", "qty", "weekend")]
    totals = table.group_by("user_id").aggregate(
        [(c, "sum") for c in summed] + [("ts", "min"), ("ts", "max")]
    )
    days = (
        table.group_by(["user_id", "event_date"])
        .aggregate([])
        .group_by("user_id")
        .aggregate([("event_date", "count")])
    )
    sessions = (
        table.group_by(["user_id", "session_id"])
        .aggregate([])
        .group_by("user_id")
        .aggregate([("session_id", "count")])
    )
    per_category = (
        pa.table({"user_id": events["user_id"], "category": events["category"], "n": columns["n"]})
        .filter(pc.is_valid(events["category"]))
        .group_by(["user_id", "category"])
        .aggregate([("n", "sum")])
    )
    c = per_category["n_sum"]
    clogc = pc.multiply(c, pc.ln(pc.cast(c, pa.float64())))
    entropy_parts = (
        pa.table({"user_id": per_category["user_id"], "c": c, "clogc": clogc})
        .group_by("user_id")
        .aggregate([("c", "sum"), ("clogc", "sum")])
    )
    known = pc.cast(entropy_parts["c_sum"], pa.float64())
    entropy = pa.table(
        {
            "user_id": entropy_parts["user_id"],
            "category_entropy": pc.subtract(pc.ln(known), pc.divide(entropy_parts["clogc_sum"], known)),
        }
    )
    out = totals.join(days, "user_id").join(sessions, "user_id").join(entropy, "user_id")
    n = pc.cast(out["n_sum"], pa.float64())
    for name in out.column_names:
        if name.startswith("n_") and name != "n_sum":
            out = out.append_column(f"share_{name}", pc.divide(pc.cast(out[name], pa.float64()), n))
    sessions_n = pc.cast(out["session_id_count"], pa.float64())
    out = out.append_column("events_per_session", pc.divide(n, sessions_n))
    return out.append_column(
        "tenure_days", pc.divide(pc.cast(pc.subtract(out["ts_max"], out["ts_min"]), pa.float64()), 86_400.0)
    )


def _cores() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan
