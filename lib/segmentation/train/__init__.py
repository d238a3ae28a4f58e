"""Stage `train`: user_features → a trained autoencoder, via pyspark's TorchDistributor.

Only this launcher knows about Spark and TorchDistributor; the training function (trainer.py) and the
feeders read the feature table's parquet files directly, one share per process.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import SparkSession

from segmentation.artifacts import publish, published
from segmentation.config import Config, TrainingConfig
from segmentation.errors import StageError
from segmentation.features import load_scaler
from segmentation.runs import StageResult
from segmentation.spark import describe
from segmentation.storage import open_store
from segmentation.storage.names import USER_FEATURES
from segmentation.train.tracking import log_training
from segmentation.train.trainer import train

log = logging.getLogger(__name__)


def models_dir(cfg: Config) -> Path:
    return Path(cfg.artifacts_root) / "models"


def model_path(cfg: Config, version: str) -> Path:
    return models_dir(cfg) / version / "model.pt"


def checkpoint_path(cfg: Config, run_id: str) -> Path:
    return Path(cfg.artifacts_root) / "checkpoints" / run_id / "checkpoint.pt"


TRAINER_SETTINGS = (
    "hidden_sizes",
    "embedding_dim",
    "activation",
    "dropout",
    "noise_std",
    "epochs",
    "batch_size",
    "learning_rate",
    "lr_schedule",
    "grad_clip",
    "validation_share",
    "patience",
    "stop_after_epochs",
    "seed",
    "feeder",
    "cache_mb",
    "use_gpu",
)


def current_model_path(cfg: Config) -> Path:
    """The model the downstream stages use: the last one `train` published."""
    version = published(models_dir(cfg) / "CURRENT")
    if version is None:
        raise StageError(f"no trained model under {models_dir(cfg)}: run the train stage first")
    return model_path(cfg, version)


def per_process_batch(training: TrainingConfig, total_rows: int) -> int:
    """`training.batch_size`, grown until an epoch over the training share of `total_rows` users takes
    at most `training.max_steps_per_epoch` steps across `training.num_processes` processes."""
    if training.max_steps_per_epoch is None:
        return training.batch_size
    train_rows = max(1, int(total_rows * (1 - training.validation_share)))
    needed = -(-train_rows // (training.num_processes * training.max_steps_per_epoch))
    return max(training.batch_size, needed)


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    users = store.read_or_fail(USER_FEATURES, "train")
    describe(spark, "train: plan")
    total_rows = users.count()
    if total_rows == 0:
        raise StageError("user_features is empty: nothing to train on")
    features_run = users.select("run_id").limit(1).head()["run_id"]
    scaler = load_scaler(cfg, features_run)
    files = users.inputFiles()
    settings = {key: getattr(cfg.training, key) for key in TRAINER_SETTINGS}
    settings["batch_size"] = per_process_batch(cfg.training, total_rows)
    spec = {
        "files": sorted(files),
        "total_rows": total_rows,
        "feature_names": scaler.feature_names,
        **settings,
        "model_path": str(model_path(cfg, run_id).resolve()),
        "checkpoint_path": str(checkpoint_path(cfg, run_id).resolve()),
        "version": run_id,
        "scaling": asdict(scaler),
    }
    log.info(
        "train: %d users, %d features, %d files, %d processes of %d rows a batch (local_mode=%s, gpu=%s)",
        total_rows,
        len(scaler.feature_names),
        len(files),
        cfg.training.num_processes,
        settings["batch_size"],
        cfg.training.local_mode,
        cfg.training.use_gpu,
    )
    describe(spark, "train: TorchDistributor")
    distributor = TorchDistributor(
        num_processes=cfg.training.num_processes,
        local_mode=cfg.training.local_mode,
        use_gpu=cfg.training.use_gpu,
    )
    # TorchDistributor prints the processes' output; it is progress, so it belongs on stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = distributor.run(train, spec)
    if not result:
        raise StageError("training returned no result")
    if not result["finished"]:
        log.info(
            "train: stopped after epoch %d of %d (training.stop_after_epochs); run `segment train "
            "--run-id %s` again to resume from the checkpoint",
            result["epochs_done"],
            cfg.training.epochs,
            run_id,
        )
        return StageResult(rows_in=total_rows, rows_out=0, details=result)
    if not Path(result["model_path"]).is_file():
        raise StageError("training finished without writing a model")
    if cfg.training.tracking:
        result["mlflow_run_id"] = log_training(
            cfg,
            run_id,
            {**settings, "max_steps_per_epoch": cfg.training.max_steps_per_epoch},
            result,
            Path(result["model_path"]),
        )
    publish(models_dir(cfg) / "CURRENT", run_id)
    log.info(
        "train: model %s after %d epochs, train loss %.5f, validation loss %.5f",
        run_id,
        result["epochs_done"],
        result["losses"][-1],
        result["val_losses"][-1],
    )
    return StageResult(rows_in=total_rows, rows_out=1, details={**result, "model_version": run_id})
