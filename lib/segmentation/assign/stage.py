"""Stage `assign`: users with events after the current segmenter's feature snapshot → their rows in
user_segments (MERGE), without retraining.

Which users: every non-bot user with an event later than the snapshot's `as_of` (users new since the
fit and users who came back). Their features are recomputed over their events in the features
window, up to silver's latest event, by the features stage's own functions with the snapshot's saved
scaling and vocabulary; they are embedded by the segmenter's encoder (the autoencoder, the IDEC
refinement or the sequence encoder) in Spark tasks, and each is given the saved clusterer's segment
and its distance to that segment's centroid. A row is written only when it differs from the user's
current row (another segment, another model, or a distance that moved), so assigning the same events
twice changes nothing. Users with new events only before `as_of` (late arrivals of old days) are
scored at the next fit.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace

from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.artifacts import published
from segmentation.assign import drift
from segmentation.cluster import history, promotion, registration
from segmentation.cluster.fit import apply_model
from segmentation.cluster.metrics import with_distance
from segmentation.cluster.refine import REPRESENTATION as IDEC
from segmentation.cluster.refine import refined_embedding
from segmentation.cluster.segmenter import ASSIGN, Segmenter
from segmentation.cluster.stage import published_run
from segmentation.config import FeaturesConfig
from segmentation.embed.encoder import METHODS
from segmentation.embed.stage import ARROW_BATCH, session_setting
from segmentation.errors import StageError
from segmentation.features.aggregates import Vocabulary
from segmentation.features.scaling import Scaler
from segmentation.features.stage import (
    bot_flagged_users,
    eligible_users,
    latest_event,
    scaled_features,
    snapshot_rules,
    window,
)
from segmentation.sequence.stage import COLUMN as SEQUENCE_COLUMN
from segmentation.sequence.stage import REPRESENTATION as SEQUENCE
from segmentation.sequence.tokens import user_sequences
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import EVENTS_SILVER, SEGMENT_CENTROIDS, USER_SEGMENTS

log = logging.getLogger(__name__)

# A recomputed distance within this relative tolerance of the stored one is the same row: the encoder
# may round differently in a batch of another size, and such a row must not count as changed.
DISTANCE_TOLERANCE = 1e-5


@dataclass
class AssignResult(StageResult):
    model_version: str = summary_field("")
    as_of: str = summary_field("")
    users_scored: int = summary_field(0)
    users_written: int = summary_field(0)
    new_users: int = summary_field(0)
    drifted: bool | None = summary_field()  # None: drift not measured (see the log)
    drifted_statistics: list[str] = field(default_factory=list)


def run(ctx: StageContext) -> AssignResult:
    segmenter = current_segmenter(ctx)
    silver = ctx.store.read_or_fail(EVENTS_SILVER, "assign")
    return assign_users(ctx, segmenter, silver, active_since(silver, segmenter.as_of))


def active_since(events: DataFrame, since: dt.datetime | None) -> DataFrame | None:
    """Input: events (user_id, event_time). Output: user_id of every user with an event after
    `since` (None, meaning every user, when `since` is None)."""
    if since is None:
        return None
    return events.where(F.col("event_time") > F.lit(since)).select("user_id").distinct()


def assign_users(
    ctx: StageContext, segmenter: Segmenter, silver: DataFrame, active: DataFrame | None
) -> AssignResult:
    """Score the `active` users (user_id) under `segmenter`, MERGE the rows that changed into
    user_segments, bring the history up to date and measure drift on them. `segment assign` passes the
    users active since the fit; each `segment stream` micro-batch the users of its files."""
    existing = ctx.store.read_or_fail(USER_SEGMENTS, "assign")
    if "model_version" not in existing.columns:
        raise StageError("user_segments was written before assign existed: run `segment cluster` once")
    as_of = latest_event(silver)
    ctx.describe(f"assign: users with events after {segmenter.features_as_of} (model {segmenter.run_id})")
    scaler = Scaler.load(ctx.paths.scaling(segmenter.features_run_id))
    users = batch(ctx, scaler, silver, as_of, active)
    users = replace(users, scaled=users.scaled.cache())
    scored = segment_rows(ctx, segmenter, scaler, users).cache()
    written = None
    try:
        with session_setting(ctx.spark, ARROW_BATCH, str(ctx.cfg.embed.batch_size)):
            n_scored = scored.count()
        written = _changed(scored, existing).cache()
        counts = written.agg(F.count("*").alias("n"), F.count(F.when(F.col("_new"), 1)).alias("new")).head()
        n_written, n_new = counts["n"], counts["new"]
        if n_written:
            if published(ctx.paths.current_segmenter) != segmenter.run_id:
                raise StageError(
                    "a cluster run published another segmenter while assign ran: run assign again"
                )
            ctx.describe(f"assign: merge {n_written} rows into {USER_SEGMENTS}")
            ctx.store.merge(written.drop("_new"), USER_SEGMENTS, ["user_id"])
        history.sync(ctx)  # also catches up a sync an earlier run did not reach
        measured = (
            drift.measure(ctx, segmenter, scaler.feature_names, users.scaled, scored) if n_scored else None
        )
    finally:
        users.scaled.unpersist()
        scored.unpersist()
        if written is not None:
            written.unpersist()
    log.info(
        "assign: %d users with events after %s scored with model %s; %d rows written (%d new users), "
        "%d unchanged",
        *(n_scored, segmenter.features_as_of, segmenter.run_id, n_written, n_new, n_scored - n_written),
    )
    return AssignResult(
        rows_in=n_scored,
        rows_out=n_written,
        model_version=segmenter.run_id,
        as_of=as_of.isoformat(),
        users_scored=n_scored,
        users_written=n_written,
        new_users=n_new,
        drifted=None if measured is None else any(r.drifted for r in measured),
        drifted_statistics=[r.name for r in measured or [] if r.drifted],
    )


def current_segmenter(ctx: StageContext) -> Segmenter:
    """The segmenter to score with: the registry's `champion` where one is registered (its segments
    republished first when the tables hold another run: promotion is an alias move), else the one the
    last cluster run published; checked against the segment tables."""
    version = published(ctx.paths.current_segmenter)
    if version is None:
        raise StageError(f"no fitted segmenter under {ctx.paths.segmenters}: run `segment cluster` first")
    champion = registration.champion_run(ctx.cfg)
    held = published_run(ctx.store, strict=False)  # None: tables of two runs
    if champion is not None and (champion != version or held != champion):
        return promotion.republish(ctx, champion)
    held = held or published_run(ctx.store)  # raises, naming the runs the tables hold
    if held != version:
        raise StageError(
            f"the segment tables hold cluster run {held} but the published segmenter is {version}: "
            "run `segment cluster` again"
        )
    return Segmenter.load(ctx.paths, version)


@dataclass(frozen=True)
class Batch:
    """The users to score: their features as the snapshot's rules build them, and their events."""

    scaled: DataFrame  # user_id, the raw feature columns, features (array<float>), as_of, run_id
    events: DataFrame  # their events in the features window
    rules: FeaturesConfig  # the features config with the snapshot's rules


def batch(
    ctx: StageContext, scaler: Scaler, silver: DataFrame, as_of: dt.datetime, active: DataFrame | None
) -> Batch:
    """The `active` users (user_id; every user when None) that are not bots and have at least
    `features.min_events` events in the features window ending at `as_of`."""
    cfg = snapshot_rules(ctx.cfg.features, scaler)
    theirs = silver if active is None else silver.join(active, "user_id", "left_semi")
    events = window(theirs.join(bot_flagged_users(theirs), "user_id", "left_anti"), as_of, cfg.lookback_days)
    users = eligible_users(events, Vocabulary.from_dict(scaler.vocabulary), as_of, cfg)
    return Batch(scaled_features(users, scaler.feature_names, scaler, as_of, ctx.run_id), events, cfg)


def score(
    ctx: StageContext,
    segmenter: Segmenter,
    scaler: Scaler,
    silver: DataFrame,
    as_of: dt.datetime,
    since: dt.datetime | None,
) -> DataFrame:
    """Input: silver. Output: `user_segments` rows (`Segmenter.rows`) of the users active since `since`."""
    return segment_rows(
        ctx, segmenter, scaler, batch(ctx, scaler, silver, as_of, active_since(silver, since))
    )


def segment_rows(ctx: StageContext, segmenter: Segmenter, scaler: Scaler, users: Batch) -> DataFrame:
    """`user_segments` rows of the batch's users: embedded, given a segment and its distance."""
    cfg, scaled, events = users.rules, users.scaled, users.events
    points = representation(ctx, segmenter, scaler, cfg, scaled, events).withColumn(
        "vector", array_to_vector("values")
    )
    clusters = apply_model(segmenter.model(ctx.paths), points, "vector", prediction="cluster")
    assigned = clusters.withColumn("segment_id", segmenter.stable("cluster"))
    centres = ctx.store.read_or_fail(SEGMENT_CENTROIDS, "assign")
    return segmenter.rows(with_distance(assigned, centres, "values", "segment_id"), ASSIGN, ctx.run_id)


def representation(
    ctx: StageContext,
    segmenter: Segmenter,
    scaler: Scaler,
    cfg: FeaturesConfig,
    scaled: DataFrame,
    events: DataFrame,
) -> DataFrame:
    """Input: scaled features (user_id, features) and those users' window events. Output: user_id,
    values (array<float>): each user in the segmenter's representation."""
    method, paths = ctx.cfg.embed.method, ctx.paths
    kind = segmenter.representation
    if kind == "raw":
        return scaled.select("user_id", F.col("features").alias("values"))
    if kind == "embedding":
        model = str(paths.model(segmenter.autoencoder_version))
        return METHODS[method](scaled, model).select("user_id", F.col("embedding").alias("values"))
    if kind == IDEC:
        model = paths.refined_model(segmenter.encoder_version)
        return refined_embedding(scaled, model, method).select("user_id", F.col(IDEC).alias("values"))
    if kind == SEQUENCE:
        categories = tuple(scaler.vocabulary.get("categories", ()))
        mine = events.join(scaled.select("user_id"), "user_id", "left_semi")
        tokens = user_sequences(mine, categories, segmenter.sequence_events, cfg.timezone)
        model = str(paths.sequence_model(segmenter.encoder_version))
        return METHODS[method](tokens, model, SEQUENCE_COLUMN).select(
            "user_id", F.col("embedding").alias("values")
        )
    raise StageError(f"segmenter {segmenter.run_id}: unknown representation {kind!r}")


def _changed(scored: DataFrame, existing: DataFrame) -> DataFrame:
    """The scored rows that differ from the user's current row, with `_new` (boolean): the user has no
    row yet."""
    before = existing.select(
        "user_id",
        F.col("segment_id").alias("_segment"),
        F.col("distance").alias("_distance"),
        F.col("model_version").alias("_model"),
    )
    joined = scored.join(before, "user_id", "left")
    moved = F.abs(F.col("_distance") - F.col("distance")) > DISTANCE_TOLERANCE * (
        1 + F.abs(F.col("_distance"))
    )
    differs = (
        F.col("_segment").isNull()
        | (F.col("_segment") != F.col("segment_id"))
        | (F.col("_model") != F.col("model_version"))
        | moved
    )
    return joined.where(differs).select(*scored.columns, F.col("_segment").isNull().alias("_new"))
