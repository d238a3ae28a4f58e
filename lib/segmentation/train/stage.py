"""Stage `train`: user_features → a trained autoencoder, via pyspark's TorchDistributor.

Only this launcher knows about Spark and TorchDistributor; the training function (trainer.py) and the
feeders read the feature table's parquet files directly, one share per process, from the table
layer's snapshot (which refuses files with deletion vectors, which a direct read would resurrect).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import DataFrame, SparkSession

from segmentation.artifacts import publish
from segmentation.config import TrainingConfig
from segmentation.errors import ConfigError, StageError
from segmentation.features.scaling import Scaler
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import USER_FEATURES
from segmentation.train.spec import TrainOutcome, TrainSpec, per_process_batch, training_rows
from segmentation.train.tracking import log_training

log = logging.getLogger(__name__)


@dataclass
class TrainResult(StageResult, TrainOutcome):
    model_version: str | None = summary_field()
    mlflow_run_id: str | None = None
    driver: dict = field(default_factory=dict)  # where the launcher ran (the processes are elsewhere)


def run(ctx: StageContext) -> TrainResult:
    cfg = ctx.cfg.training
    schedules_gpus = distributor_schedules_gpus(ctx.spark, cfg)
    ctx.describe("train: plan")
    spec = plan(ctx)
    log.info(
        "train: %d users, %d features, %d files, %d processes of %d rows a batch (local_mode=%s, gpu=%s)",
        spec.total_rows,
        len(spec.feature_names),
        len(spec.files),
        cfg.num_processes,
        spec.batch_size,
        cfg.local_mode,
        cfg.use_gpu,
    )
    ctx.describe("train: TorchDistributor")
    outcome = launch(ctx.spark, cfg, spec, schedules_gpus)
    result = TrainResult(
        rows_in=spec.total_rows, driver={"host": socket.gethostname(), "pid": os.getpid()}, **asdict(outcome)
    )
    if not outcome.finished:
        log.info(
            "train: stopped after epoch %d of %d (training.stop_after_epochs); run `segment train "
            "--run-id %s` again to resume from the checkpoint",
            outcome.epochs_done,
            cfg.epochs,
            ctx.run_id,
        )
        return result
    if not Path(outcome.model_path).is_file():
        raise StageError("training finished without writing a model")
    if cfg.tracking:
        result.mlflow_run_id = log_training(ctx.cfg, spec, outcome)
    publish(ctx.paths.current_model, ctx.run_id)
    log.info(
        "train: model %s after %d epochs, train loss %.5f, validation loss %.5f",
        ctx.run_id,
        outcome.epochs_done,
        outcome.losses[-1],
        outcome.val_losses[-1],
    )
    result.rows_out, result.model_version = 1, ctx.run_id
    return result


def launch(spark: SparkSession, cfg: TrainingConfig, spec: TrainSpec, schedules_gpus: bool) -> TrainOutcome:
    """Run `spec` in `training.num_processes` TorchDistributor processes; rank 0's outcome."""
    distributor = TorchDistributor(
        num_processes=cfg.num_processes, local_mode=cfg.local_mode, use_gpu=schedules_gpus
    )
    # TorchDistributor prints the processes' output; it is progress, so it belongs on stderr.
    with contextlib.redirect_stdout(sys.stderr):
        outcome = distributor.run(_entry(shipped_packages(spark)), pickle.dumps(spec))
    if not isinstance(outcome, TrainOutcome):
        raise StageError("training returned no result")
    return outcome


def finished_model(outcome: TrainOutcome, what: str, resume: str) -> Path:
    """The model file of a training that must finish in one launch (the sequence encoder, the idec
    refinement); a StageError naming `what`, and `resume` (how to continue), when it did not."""
    if not outcome.finished:
        raise StageError(f"{what}: training stopped after epoch {outcome.epochs_done}; {resume}")
    if not Path(outcome.model_path).is_file():
        raise StageError(f"{what}: training finished without writing a model")
    log.info(
        "%s: trained for %d epochs, loss %.5f (validation %.5f)",
        what,
        outcome.epochs_done,
        outcome.losses[-1],
        outcome.val_losses[-1],
    )
    return Path(outcome.model_path)


def plan(ctx: StageContext) -> TrainSpec:
    """The training run: the feature table's snapshot (files and rows, read through the table layer),
    its scaling statistics, and `training.*`."""
    users, files, total_rows = table_snapshot(ctx, USER_FEATURES, "train")
    scaler = Scaler.load(ctx.paths.scaling(users.select("run_id").limit(1).head()["run_id"]))
    return spec_for(
        ctx,
        files,
        total_rows,
        tuple(scaler.feature_names),
        ctx.paths.model(ctx.run_id),
        ctx.paths.checkpoint(ctx.run_id),
        scaling=asdict(scaler),
    )


def table_snapshot(ctx: StageContext, name: str, stage: str) -> tuple[DataFrame, tuple[str, ...], int]:
    """A table's current snapshot as the training processes read it: the frame, its parquet files (the
    table layer refuses files with deletion vectors, which a direct read would resurrect) and rows."""
    ctx.store.read_or_fail(name, stage)
    snapshot = ctx.store.snapshot(name)
    frame = ctx.store.read(name, snapshot.version)
    total_rows = snapshot.rows if snapshot.rows is not None else frame.count()
    if total_rows == 0:
        raise StageError(f"{name} is empty: nothing to train on")
    return frame, tuple(sorted(snapshot.files)), total_rows


def spec_for(
    ctx: StageContext,
    files: tuple[str, ...],
    total_rows: int,
    feature_names: tuple[str, ...],
    model_path: Path,
    checkpoint_path: Path,
    **changes,
) -> TrainSpec:
    """A TrainSpec over `files` from `training.*`, with `changes` to any of its fields."""
    cfg = ctx.cfg.training
    train_rows = training_rows(total_rows, cfg.validation_share)
    spec = TrainSpec(
        files=files,
        total_rows=total_rows,
        feature_names=feature_names,
        hidden_sizes=tuple(cfg.hidden_sizes),
        embedding_dim=cfg.embedding_dim,
        activation=cfg.activation,
        dropout=cfg.dropout,
        noise_std=cfg.noise_std,
        epochs=cfg.epochs,
        batch_size=per_process_batch(cfg.batch_size, train_rows, cfg.num_processes, cfg.max_steps_per_epoch),
        learning_rate=cfg.learning_rate,
        lr_schedule=cfg.lr_schedule,
        grad_clip=cfg.grad_clip,
        validation_share=cfg.validation_share,
        patience=cfg.patience,
        stop_after_epochs=cfg.stop_after_epochs,
        seed=cfg.seed,
        feeder=cfg.feeder,
        cache_mb=cfg.cache_mb,
        use_gpu=cfg.use_gpu,
        model_path=str(model_path.resolve()),
        checkpoint_path=str(checkpoint_path.resolve()),
        version=ctx.run_id,
    )
    return replace(spec, **changes)


def distributor_schedules_gpus(spark: SparkSession, training: TrainingConfig) -> bool:
    """Whether TorchDistributor assigns the GPUs (`use_gpu=True`) or the processes take
    cuda:LOCAL_RANK themselves. TorchDistributor takes GPUs only from Spark's resource scheduling:
    `spark.task.resource.gpu.amount` on a cluster, `spark.driver.resource.gpu.*` in local mode (set
    on Databricks GPU clusters, unset in a plain local session). Where a local session has none,
    the training processes use the driver's GPUs directly, one each."""
    if not training.use_gpu:
        return False
    if not training.local_mode:
        if float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) < 1:
            raise ConfigError(
                "training.use_gpu with training.local_mode=false needs spark.task.resource.gpu.amount "
                "of at least 1 (and executors with GPUs): set it in spark.conf or the cluster's config"
            )
        return True
    if float(spark.conf.get("spark.driver.resource.gpu.amount", "0") or 0) >= 1:
        return True
    import torch

    visible = torch.cuda.device_count()
    if visible == 0:
        raise ConfigError(
            f"training.use_gpu is true but torch {torch.__version__} sees no CUDA GPU on the driver "
            "(training.local_mode=true trains there)"
        )
    if training.num_processes > visible:
        raise ConfigError(
            f"training.num_processes={training.num_processes} with training.use_gpu needs one GPU a "
            f"process; the driver has {visible}"
        )
    return False


def shipped_packages(spark: SparkSession) -> list[str]:
    """The file names of what spark-submit shipped with --py-files (the product's wheel on a cluster
    where it is not installed): on executors they lie in each task's working directory."""
    files = spark.conf.get("spark.submit.pyFiles", None) or ""  # a session's conf holds the context's
    return [os.path.basename(f) for f in files.split(",") if f]


def _entry(shipped: list[str]):
    """The function TorchDistributor runs in each training process. On executors those processes are
    torchrun's children, which do not inherit the task's sys.path: Spark puts --py-files there, not on
    PYTHONPATH. So this function is a closure, pickled by value (not imported), and puts the shipped
    packages on sys.path before importing the trainer from them. For the same reason the `TrainSpec`
    crosses pickled: unpickled here, after sys.path is fixed, not by torchrun's child on start-up."""

    def train_in_process(pickled_spec: bytes):
        import os
        import pickle
        import sys

        for name in shipped:
            path = os.path.abspath(name)
            if os.path.exists(path) and path not in sys.path:
                sys.path.insert(0, path)
        from segmentation.train.trainer import train as train_fn

        return train_fn(pickle.loads(pickled_spec))

    return train_in_process
