"""Promotion is an alias move: when the registry's `champion` names a cluster run other than the one
the segment tables hold (a rollback, or a promotion, done in MLflow or Unity Catalog), `republish` puts
that run's segments back before anything is scored.

Each fit records the versions of segment_profiles, segment_centroids and user_segments in which it
published its segments (`Segmenter.record_tables`). Republishing reads those versions (Delta time
travel) and writes them back as the tables' current versions, in the order a fit replaces them (each
user's row as `assigned_at` now, when it becomes current again), then moves the CURRENT pointer to
that run and brings user_segment_history up to date. `assign` then scores the users with events
after that fit's snapshot with its segmenter, so the tables hold what they would hold had that run
stayed current. Republishing again is harmless (the same rows are written); a republish cut short
leaves tables of two runs, which the next `assign` republishes whole.
Time travel needs the recorded versions' files: after VACUUM has removed them (`maintain`, past its
retention) the run cannot be republished and the error says to fit again.
"""

from __future__ import annotations

import logging

from pyspark.errors import PySparkException
from pyspark.sql import functions as F

from segmentation import views
from segmentation.artifacts import publish
from segmentation.cluster import history
from segmentation.cluster.segmenter import Segmenter
from segmentation.cluster.stage import SEGMENT_TABLES
from segmentation.errors import StageError
from segmentation.stage import StageContext
from segmentation.tables import USER_SEGMENTS

log = logging.getLogger(__name__)


def republish(ctx: StageContext, run_id: str) -> Segmenter:
    """Make cluster run `run_id`'s segments current again: the segment tables as that run's fit wrote
    them, then the CURRENT segmenter pointer."""
    tables = SEGMENT_TABLES
    segmenter = Segmenter.load(ctx.paths, run_id)
    versions = segmenter.published_tables(ctx.paths)
    if versions is None or set(tables) - set(versions):
        raise StageError(
            f"cluster run {run_id} recorded no table versions to republish from (fitted by an older "
            "version): run `segment cluster` to fit a new champion"
        )
    log.info(
        "assign: `champion` names cluster run %s: republishing its segments (tables at %s)", run_id, versions
    )
    ctx.describe(f"assign: republish cluster run {run_id}")
    store = ctx.store
    # Every recorded version is checked readable and the run's before the first table is replaced.
    written = {name: store.read(name, versions[name]) for name in tables}
    for name, frame in written.items():
        column = "model_version" if name == USER_SEGMENTS else "run_id"
        try:
            held = {r[0] for r in frame.select(column).distinct().limit(2).collect()}
        except PySparkException as exc:
            first = str(exc).strip().splitlines()[0]
            raise StageError(
                f"cannot republish cluster run {run_id}: version {versions[name]} of {name} is no longer "
                f"readable ({first}); VACUUM may have removed its files: run `segment cluster` to fit a "
                "new champion"
            ) from exc
        if held != {run_id}:
            raise StageError(
                f"version {versions[name]} of {name} holds cluster runs {sorted(held)}, not {run_id}: "
                "run `segment cluster` to fit a new champion"
            )
    # A republished user's row is current from now: history closes the stretch it ends at this time.
    written[USER_SEGMENTS] = written[USER_SEGMENTS].withColumn("assigned_at", F.current_timestamp())
    for name, frame in written.items():
        store.overwrite(frame, name, store.partition_columns(name) or None)
    publish(ctx.paths.current_segmenter, run_id)
    history.sync(ctx)
    views.persist(store, ctx.cfg.privacy.min_segment_size, ctx.cfg.recommend.event_types)
    log.info("assign: cluster run %s republished; its segments are current again", run_id)
    return segmenter
