"""Stage `features`: events_silver → user_features (raw features + scaled `features` array<float>),
and the scaling statistics beside it."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field, replace

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.config import FeaturesConfig
from segmentation.errors import StageError
from segmentation.features.aggregates import (
    FeatureSpec,
    Vocabulary,
    feature_specs,
    user_features,
    vocabulary,
)
from segmentation.features.scaling import SPEND_TOTALS, Scaler, fit_scaler
from segmentation.spark import default_parallelism
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import EVENTS_SILVER, USER_FEATURES

log = logging.getLogger(__name__)

SNAPSHOT_RULES = ("lookback_days", "min_events", "timezone")  # saved with the scaling statistics


@dataclass
class FeaturesResult(StageResult):
    as_of: str = summary_field("")
    features: list[str] = summary_field(default_factory=list)
    dropped_constant: list[str] = field(default_factory=list)
    users_excluded: int = summary_field(0)
    bot_users_excluded: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)


def run(ctx: StageContext) -> FeaturesResult:
    cfg = ctx.cfg.features
    silver = ctx.store.read_or_fail(EVENTS_SILVER, "features")
    phase = ctx.phases("features")
    phase("as_of and window")
    as_of = _as_of(silver, cfg.as_of)
    # A user with any bot-flagged event is left out (incremental ingest re-flags only the days it rewrites).
    phase("bot users")
    bots = bot_flagged_users(silver).cache()
    users = None
    try:
        n_bots = bots.count()
        # Materialized, the bot list has a known size: under spark.sql.autoBroadcastJoinThreshold
        # (10 MB, ~300k ids) Spark broadcasts it, so no event is shuffled or sorted for the anti-join
        # and the vocabulary's counts combine before their shuffle.
        events = window(silver.join(bots, "user_id", "left_anti"), as_of, cfg.lookback_days)
        phase("vocabulary")
        vocab = vocabulary(events, cfg.top_categories, cfg.top_devices)
        specs = feature_specs(vocab)
        names = [s.name for s in specs]
        phase("per-user aggregation and scaling statistics")
        users = eligible_users(events, vocab, as_of, cfg).cache()
        netted = volume_netted(specs, cfg)
        scaler = replace(
            fit_scaler(
                users, names, [s.log1p for s in specs], cfg.clip_std, ctx.run_id, asdict(vocab), netted
            ),
            rules={name: getattr(cfg, name) for name in SNAPSHOT_RULES},
        )
        phase("write user_features")
        _write(ctx, scaled_features(users, names, scaler, as_of, ctx.run_id))
        scaler.save(ctx.paths.scaling(ctx.run_id))
        phase("counts")
        n_users = ctx.store.read(USER_FEATURES).count()
        excluded = _users_up_to(silver, as_of) - n_users
        n_events = silver.count()
    finally:
        bots.unpersist()
        if users is not None:
            users.unpersist()
    seconds = phase.done()
    log.info(
        "features: %d users x %d features (as of %s); %d users left out (%d bot users in silver, too few "
        "events or none in the lookback); dropped constant: %s",
        *(n_users, len(scaler.feature_names), as_of, excluded, n_bots, scaler.dropped_constant),
    )
    return FeaturesResult(
        rows_in=n_events,
        rows_out=n_users,
        as_of=as_of.isoformat(),
        features=scaler.feature_names,
        dropped_constant=scaler.dropped_constant,
        users_excluded=excluded,
        bot_users_excluded=n_bots,
        phase_seconds=seconds,
    )


def volume_netted(specs: list[FeatureSpec], cfg: FeaturesConfig) -> list[str]:
    """The features that enter the array net of volume: the activity family with
    features.partial_out_volume, and the spend totals too with features.partial_out_spend."""
    if not cfg.partial_out_volume:
        return []
    spend = SPEND_TOTALS if cfg.partial_out_spend else ()
    return [s.name for s in specs if s.family == "activity" or s.name in spend]


def eligible_users(
    events: DataFrame, vocab: Vocabulary, as_of: dt.datetime, cfg: FeaturesConfig
) -> DataFrame:
    """Input: the window's canonical events of non-bot users. Output: the raw features of
    `user_features(..)` for every user with at least `features.min_events` events (the fitted
    snapshot's users and the users `assign` scores are chosen by this one rule)."""
    users = user_features(events, vocab, F.lit(as_of).cast("timestamp"), cfg.timezone)
    return users.where(F.col("n_events") >= cfg.min_events)


def snapshot_rules(cfg: FeaturesConfig, scaler: Scaler) -> FeaturesConfig:
    """`cfg` with the rules the snapshot of `scaler` was built under (the config's own where the
    snapshot predates saving them)."""
    if not scaler.rules:
        log.warning("features: snapshot %s saved no rules; using the configured ones", scaler.run_id)
    return replace(cfg, **{name: scaler.rules[name] for name in SNAPSHOT_RULES if name in scaler.rules})


def bot_flagged_users(silver: DataFrame) -> DataFrame:
    """user_id of every user with a bot-flagged event: left out of features, sequences and assign."""
    return silver.where(F.col("is_bot")).select("user_id").distinct()


def latest_event(silver: DataFrame) -> dt.datetime:
    """The latest event time in silver (the default `as_of`); a StageError when silver is empty."""
    latest = silver.agg(F.max("event_time")).head()[0]
    if latest is None:
        raise StageError("events_silver is empty: nothing to build features from")
    return latest


def window(events: DataFrame, as_of: dt.datetime, lookback_days: int | None) -> DataFrame:
    """Events up to `as_of` and, with `lookback_days`, no older than that many days before it."""
    events = events.where(F.col("event_time") <= F.lit(as_of))
    if lookback_days:
        events = events.where(F.col("event_time") > F.lit(as_of - dt.timedelta(days=lookback_days)))
    return events


def scaled_features(
    users: DataFrame, names: list[str], scaler: Scaler, as_of: dt.datetime, run_id: str
) -> DataFrame:
    """Input: user_id and the feature columns `names`. Output: user_id, the feature columns, `features`
    (array<float>: the scaled vector), as_of, run_id."""
    return users.select(
        "user_id",
        *names,
        scaler.transform().alias("features"),
        F.lit(as_of).cast("timestamp").alias("as_of"),
        F.lit(run_id).alias("run_id"),
    )


def _as_of(silver: DataFrame, configured: str | None) -> dt.datetime:
    """`features.as_of` (UTC when it names no zone), else silver's latest event time."""
    if configured:
        as_of = dt.datetime.fromisoformat(configured)
        return as_of if as_of.tzinfo else as_of.replace(tzinfo=dt.UTC)
    return latest_event(silver)


def _write(ctx: StageContext, out: DataFrame) -> None:
    # At least a few files, so every training process gets a share to read. Users are placed by a hash
    # of their id and sorted within each file: the same features give the same files in the same row
    # order, so training reads the same batches and a rerun reproduces its losses (a round-robin
    # spread placed rows by shuffle arrival order, which differs from one run to the next).
    partitions = max(2 * ctx.cfg.training.num_processes, default_parallelism(ctx.spark))
    ctx.store.overwrite(out.repartition(partitions, "user_id").sortWithinPartitions("user_id"), USER_FEATURES)


def _users_up_to(silver: DataFrame, as_of: dt.datetime) -> int:
    """Users in silver with an event up to as_of (those without a feature row are the excluded ones)."""
    return silver.where(F.col("event_time") <= F.lit(as_of)).select("user_id").distinct().count()
