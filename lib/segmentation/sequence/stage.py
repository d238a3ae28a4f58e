"""Stage `sequence`: events_silver and user_features → user_sequences (each user's last events as
tokens), a sequence encoder trained through TorchDistributor on them, and user_sequence_embeddings
(the encoder applied in Spark tasks). Built only when `clustering.candidates` names `sequence`.

The users are user_features' users (bots and users under `features.min_events` stay out) and their
events those the features saw: up to the snapshot's `as_of`, within `features.lookback_days`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import functions as F

from segmentation.embed.encoder import METHODS
from segmentation.embed.stage import ARROW_BATCH, session_setting
from segmentation.errors import StageError
from segmentation.features.stage import window
from segmentation.sequence.tokens import FIELDS, cardinalities, user_sequences
from segmentation.spark import default_parallelism
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import EVENTS_SILVER, USER_FEATURES, USER_SEQUENCE_EMBEDDINGS, USER_SEQUENCES
from segmentation.train.spec import SequenceSpec, per_process_batch, training_rows
from segmentation.train.stage import (
    distributor_schedules_gpus,
    finished_model,
    launch,
    spec_for,
    table_snapshot,
)

log = logging.getLogger(__name__)

REPRESENTATION = "sequence"
COLUMN = "sequence"


@dataclass
class SequenceResult(StageResult):
    skipped: str | None = summary_field()
    model_version: str | None = summary_field()
    epochs_done: int = 0
    losses: list[float] | None = None


def run(ctx: StageContext) -> SequenceResult:
    if REPRESENTATION not in ctx.cfg.clustering.candidates:
        reason = "clustering.candidates does not name sequence"
        log.info("sequence: skipped (%s)", reason)
        return SequenceResult(skipped=reason)
    features = ctx.store.read_or_fail(USER_FEATURES, "sequence")
    silver = ctx.store.read_or_fail(EVENTS_SILVER, "sequence")
    snapshot = features.select("run_id", "as_of").head()
    if snapshot is None:
        raise StageError("user_features is empty: no users to build sequences for")
    categories = _categories(ctx, snapshot["run_id"])
    ctx.describe("sequence: tokens")
    events = window(silver, snapshot["as_of"], ctx.cfg.features.lookback_days).join(
        features.select("user_id"), "user_id", "left_semi"
    )
    tokens = user_sequences(events, categories, ctx.cfg.sequence.max_events, ctx.cfg.features.timezone)
    partitions = max(2 * ctx.cfg.training.num_processes, default_parallelism(ctx.spark))
    # placed and sorted by user, as user_features: the same events give the same files and batches
    ctx.store.overwrite(
        tokens.withColumn("run_id", F.lit(ctx.run_id))
        .repartition(partitions, "user_id")
        .sortWithinPartitions("user_id"),
        USER_SEQUENCES,
    )
    model = _train(ctx, categories)
    ctx.describe("sequence: embed")
    users = ctx.store.read(USER_SEQUENCES)
    out = METHODS[ctx.cfg.embed.method](users, str(model), COLUMN).select(
        "user_id", "embedding", F.lit(ctx.run_id).alias("model_version"), F.lit(ctx.run_id).alias("run_id")
    )
    with session_setting(ctx.spark, ARROW_BATCH, str(ctx.cfg.embed.batch_size)):
        ctx.store.overwrite(out, USER_SEQUENCE_EMBEDDINGS)
    embedded = ctx.store.read(USER_SEQUENCE_EMBEDDINGS).count()
    log.info("sequence: %d users embedded with sequence encoder %s", embedded, ctx.run_id)
    return SequenceResult(rows_in=features.count(), rows_out=embedded, model_version=ctx.run_id)


def _categories(ctx: StageContext, features_run: str) -> tuple[str, ...]:
    """The top categories the features stage chose (saved with its scaling statistics)."""
    from segmentation.features.scaling import Scaler

    vocabulary = Scaler.load(ctx.paths.scaling(features_run)).vocabulary
    return tuple(vocabulary.get("categories", ()))


def _train(ctx: StageContext, categories: tuple[str, ...]) -> Path:
    """The sequence encoder, trained through TorchDistributor on user_sequences' files."""
    cfg = ctx.cfg.sequence
    _, files, rows = table_snapshot(ctx, USER_SEQUENCES, "sequence")
    spec = spec_for(
        ctx,
        files,
        rows,
        FIELDS,
        ctx.paths.sequence_model(ctx.run_id),
        ctx.paths.sequence_checkpoint(ctx.run_id),
        hidden_sizes=(cfg.hidden_size,),
        epochs=cfg.epochs,
        batch_size=per_process_batch(
            cfg.batch_size,
            training_rows(rows, ctx.cfg.training.validation_share),
            ctx.cfg.training.num_processes,
            cfg.max_steps_per_epoch,
        ),
        learning_rate=cfg.learning_rate,
        noise_std=0.0,
        dropout=0.0,
        patience=0,  # contrastive losses of random crops are noisy; the best epoch is still kept
        column=COLUMN,
        sequence=SequenceSpec(
            cardinalities=cardinalities(categories),
            inputs=tuple(FIELDS.index(name) for name in cfg.inputs),
            max_events=cfg.max_events,
            field_dim=cfg.field_dim,
            temperature=cfg.temperature,
        ),
    )
    ctx.describe("sequence: TorchDistributor")
    log.info(
        "sequence: %d users, their last %d events; training for %d epochs", rows, cfg.max_events, spec.epochs
    )
    outcome = launch(
        ctx.spark, ctx.cfg.training, spec, distributor_schedules_gpus(ctx.spark, ctx.cfg.training)
    )
    return finished_model(
        outcome, "sequence: encoder", f"run `segment sequence --run-id {ctx.run_id}` again to resume"
    )
