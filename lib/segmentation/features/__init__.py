"""Stage `features`: events_silver → user_features (raw features + scaled `features` array<float>)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.config import Config
from segmentation.errors import StageError
from segmentation.features.aggregates import feature_specs, user_features, vocabulary
from segmentation.features.scaling import Scaler, fit_scaler
from segmentation.runs import StageResult
from segmentation.spark import Phases
from segmentation.storage import open_store
from segmentation.storage.names import EVENTS_SILVER, USER_FEATURES

log = logging.getLogger(__name__)


def scaling_path(cfg: Config, run_id: str) -> Path:
    """Scaling statistics of the user_features snapshot written by `run_id`."""
    return Path(cfg.artifacts_root) / "user_features" / run_id / "scaling.json"


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    silver = store.read_or_fail(EVENTS_SILVER, "features")
    phase = Phases(spark, "features")
    phase("as_of and window")
    if cfg.features.as_of:
        as_of = dt.datetime.fromisoformat(cfg.features.as_of)
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=dt.UTC)
    else:
        as_of = silver.agg(F.max("event_time")).head()[0]
        if as_of is None:
            raise StageError("events_silver is empty: nothing to build features from")
    # A user with any bot-flagged event is left out (incremental ingest re-flags only the days it rewrites).
    phase("bot users")
    bots = silver.where(F.col("is_bot")).select("user_id").distinct().cache()
    users = None
    try:
        n_bots = bots.count()
        # Materialized, the bot list has a known size: under spark.sql.autoBroadcastJoinThreshold
        # (10 MB, ~300k ids) Spark broadcasts it, so no event is shuffled or sorted for the anti-join
        # and the vocabulary's counts combine before their shuffle.
        events = silver.join(bots, "user_id", "left_anti").where(F.col("event_time") <= F.lit(as_of))
        if cfg.features.lookback_days:
            events = events.where(
                F.col("event_time") > F.lit(as_of - dt.timedelta(days=cfg.features.lookback_days))
            )

        phase("vocabulary")
        vocab = vocabulary(events, cfg.features.top_categories, cfg.features.top_devices)
        specs = feature_specs(vocab)
        names = [s.name for s in specs]
        phase("per-user aggregation and scaling statistics")
        users = user_features(events, vocab, F.lit(as_of).cast("timestamp"), cfg.features.timezone)
        users = users.where(F.col("n_events") >= cfg.features.min_events).cache()
        scaler = fit_scaler(
            users, names, [s.log1p for s in specs], cfg.features.clip_std, run_id, asdict(vocab)
        )
        out = users.select(
            "user_id",
            *names,
            scaler.transform().alias("features"),
            F.lit(as_of).cast("timestamp").alias("as_of"),
            F.lit(run_id).alias("run_id"),
        )
        # At least a few files, so every training process gets a share to read.
        partitions = max(2 * cfg.training.num_processes, spark.sparkContext.defaultParallelism)
        phase("write user_features")
        store.overwrite(out.repartition(partitions), USER_FEATURES)
        scaler.save(scaling_path(cfg, run_id))
        phase("counts")
        n_users = store.read(USER_FEATURES).count()
        excluded = _excluded_users(silver, as_of, n_users)
        n_events = silver.count()
    finally:
        bots.unpersist()
        if users is not None:
            users.unpersist()
    seconds = phase.done()
    log.info(
        "features: %d users x %d features (as of %s); %d users left out (%d bot users in silver, "
        "too few events or none in the lookback); dropped constant: %s",
        n_users,
        len(scaler.feature_names),
        as_of,
        excluded,
        n_bots,
        scaler.dropped_constant,
    )
    return StageResult(
        rows_in=n_events,
        rows_out=n_users,
        details={
            "as_of": as_of.isoformat(),
            "features": scaler.feature_names,
            "dropped_constant": scaler.dropped_constant,
            "users_excluded": excluded,
            "bot_users_excluded": n_bots,
            "phase_seconds": seconds,
        },
    )


def _excluded_users(silver, as_of, n_users: int) -> int:
    """Users in silver (up to as_of) who did not get a feature row: bots and those below min_events."""
    all_users = silver.where(F.col("event_time") <= F.lit(as_of)).select("user_id").distinct().count()
    return all_users - n_users


def load_scaler(cfg: Config, run_id: str) -> Scaler:
    return Scaler.load(scaling_path(cfg, run_id))
