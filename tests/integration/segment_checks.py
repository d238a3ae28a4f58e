"""Checks, lake copies and day-2 logs shared by the assign, identity, drift, report, registry and
deep-representation tests:
`assign`'s scoring path, applied to the fitted snapshot's own users at the snapshot's as_of, must give
the fit's segments; user_segment_history's open rows must be user_segments; raw logs of returning,
copied and planted users after the generated month."""

import datetime as dt
import json
import shutil

from pyspark.sql import functions as F

from segmentation.assign.stage import current_segmenter, score
from segmentation.config import Config
from segmentation.features.scaling import Scaler
from segmentation.stage import StageContext
from segmentation.storage import TableStore, open_store
from segmentation.tables import CANONICAL_FIELDS, EVENTS_SILVER, USER_SEGMENTS
from tests.conftest import LAKE_SETTINGS, make_config

DAY2_SHIFT_DAYS = 35  # five whole weeks: past the generated month, and the same weekdays (31 days
# moved every event three weekdays on, and the drift monitor rightly flagged weekend_share)
PLANTED = 150  # users of a behaviour the first fit never saw: night-time ratings and searches only


def assert_rescoring_reproduces_the_fit(spark, cfg) -> None:
    ctx = StageContext.create(spark, cfg, "rescore")
    segmenter = current_segmenter(ctx)
    scaler = Scaler.load(ctx.paths.scaling(segmenter.features_run_id))
    silver = ctx.store.read(EVENTS_SILVER)
    rescored = score(ctx, segmenter, scaler, silver, segmenter.as_of, None)
    fitted = ctx.store.read(USER_SEGMENTS).select(
        "user_id", F.col("segment_id").alias("fit_segment"), F.col("distance").alias("fit_distance")
    )
    pairs = rescored.join(fitted, "user_id", "full_outer").cache()
    try:
        counts = pairs.agg(
            F.count("*").alias("users"),
            F.count(F.when(F.col("segment_id").isNull() | F.col("fit_segment").isNull(), 1)).alias(
                "unmatched"
            ),
            F.count(F.when(F.col("segment_id") != F.col("fit_segment"), 1)).alias("moved"),
            F.max(F.abs(F.col("distance") - F.col("fit_distance"))).alias("max_gap"),
        ).head()
    finally:
        pairs.unpersist()
    assert counts["unmatched"] == 0, counts  # the same users: the features stage's rule chose both
    # an encoder may round differently in batches of another size: a user on a boundary may flip
    assert counts["moved"] <= counts["users"] // 1000, counts
    assert counts["max_gap"] < 1e-3, counts


def assert_history_follows_the_segments(store) -> None:
    """user_segment_history's open rows are user_segments' users and segments, one per user."""
    current = store.read(USER_SEGMENTS).select("user_id", "segment_id")
    open_rows = store.read("user_segment_history").where("is_current").select("user_id", "segment_id")
    assert open_rows.count() == current.count()
    assert current.exceptAll(open_rows).count() == 0 and open_rows.exceptAll(current).count() == 0


def day2_logs(spark, store, returning: list[str], sources: list[str], folder) -> None:
    """Raw JSON lines for day 2: every event of `returning` users again, and every event of `sources`
    as a new user `new-<id>`, all moved DAY2_SHIFT_DAYS later (sessions left to ingest to infer)."""
    silver = store.read(EVENTS_SILVER)
    back = silver.where(F.col("user_id").isin(returning))
    new = silver.where(F.col("user_id").isin(sources)).withColumn(
        "user_id", F.concat(F.lit("new-"), "user_id")
    )
    moved = F.col("event_time") + F.expr(f"INTERVAL {DAY2_SHIFT_DAYS} DAYS")
    fields = [c for c in CANONICAL_FIELDS if c not in ("event_time", "session_id")]
    back.unionByName(new).select(
        *fields, F.concat(F.date_format(moved, "yyyy-MM-dd'T'HH:mm:ss"), F.lit("+00:00")).alias("event_time")
    ).coalesce(1).write.json(str(folder))


def planted_group(folder, category: str, device: str) -> None:
    """Raw JSON lines of the new group, after the generated month (no day is crowded, no new
    category or device enters the features' vocabulary)."""
    start = dt.datetime(2026, 10, 5, 3, 0, tzinfo=dt.UTC)
    folder.mkdir()
    with (folder / "planted.json").open("w") as out:
        for u in range(PLANTED):
            for e in range(8):
                at = start + dt.timedelta(days=e % 2, minutes=3 * e + u % 20)
                out.write(
                    json.dumps(
                        {
                            "user_id": f"planted-{u}",
                            "event_time": at.isoformat(),
                            "event_type": "rate" if e % 2 else "search",
                            "category": category,
                            "device": device,
                        }
                    )
                    + "\n"
                )


def raw_kmeans_copy(spark, lake, root, extra_k: int = 0) -> tuple[Config, TableStore]:
    """A copy of the shared lake under `root` (new logs go to root/day2) whose next fit is k-means on
    the raw features at the lake's own k plus `extra_k`: tests about what follows a fit, not about
    choosing k."""
    shutil.copytree(lake.root / "lake", root / "lake")
    cfg = make_config(root, *LAKE_SETTINGS, f"input.path={root / 'day2'}", "clustering.candidates=[raw]")
    store = open_store(spark, cfg.storage)
    cfg.clustering.k = [store.read(USER_SEGMENTS).select("k").head()[0] + extra_k]
    cfg.clustering.algorithms = ["kmeans"]
    return cfg, store
