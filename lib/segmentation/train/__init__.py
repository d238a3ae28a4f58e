"""Stage `train`: user_features → a trained autoencoder, via pyspark's TorchDistributor.

Only this launcher knows about Spark and TorchDistributor; the training function (trainer.py) and the
feeders read the feature table's parquet files directly, one share per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import asdict
from pathlib import Path

from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import SparkSession

from segmentation.artifacts import publish, published
from segmentation.config import Config, TrainingConfig
from segmentation.errors import ConfigError, StageError
from segmentation.features import load_scaler
from segmentation.runs import StageResult
from segmentation.spark import describe
from segmentation.storage import open_store
from segmentation.storage.names import USER_FEATURES
from segmentation.train.tracking import log_training

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
    files = spark.sparkContext.getConf().get("spark.submit.pyFiles", "") or ""
    return [os.path.basename(f) for f in files.split(",") if f]


def _entry(shipped: list[str]):
    """The function TorchDistributor runs in each training process. On executors those processes are
    torchrun's children, which do not inherit the task's sys.path: Spark puts --py-files there, not on
    PYTHONPATH. So this function is a closure, pickled by value (not imported), and puts the shipped
    packages on sys.path before importing the trainer from them."""

    def train_in_process(spec: dict) -> dict:
        import os
        import sys

        for name in shipped:
            path = os.path.abspath(name)
            if os.path.exists(path) and path not in sys.path:
                sys.path.insert(0, path)
        from segmentation.train.trainer import train as train_fn

        return train_fn(spec)

    return train_in_process


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    schedules_gpus = distributor_schedules_gpus(spark, cfg.training)
    store = open_store(spark, cfg.storage)
    store.read_or_fail(USER_FEATURES, "train")
    describe(spark, "train: plan")
    # The feeders read the snapshot's files directly; the table layer names them (and refuses files
    # with deletion vectors, which a direct read would resurrect).
    snapshot = store.snapshot(USER_FEATURES)
    users = store.read(USER_FEATURES, snapshot.version)
    total_rows = snapshot.rows if snapshot.rows is not None else users.count()
    if total_rows == 0:
        raise StageError("user_features is empty: nothing to train on")
    features_run = users.select("run_id").limit(1).head()["run_id"]
    scaler = load_scaler(cfg, features_run)
    files = snapshot.files
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
        use_gpu=schedules_gpus,
    )
    # TorchDistributor prints the processes' output; it is progress, so it belongs on stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = distributor.run(_entry(shipped_packages(spark)), spec)
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
    result["driver"] = {"host": socket.gethostname(), "pid": os.getpid()}
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
