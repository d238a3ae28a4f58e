"""MLflow tracking of a training run: parameters, per-epoch losses, and the model with its signature.

The embedded default is a file store under the artifacts root; on a cluster set
`training.tracking_uri` (e.g. `databricks`). The product itself only ever loads models from its own
weights-only files (train.model_path), never from MLflow's pickled copy.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from segmentation.config import Config
from segmentation.train.spec import TrainOutcome, TrainSpec

log = logging.getLogger(__name__)


# TrainSpec fields that are not settings: the data's files, the artifacts' paths, the statistics.
NOT_PARAMS = ("files", "feature_names", "model_path", "checkpoint_path", "scaling", "version")


def tracking_uri(cfg: Config) -> str:
    return cfg.training.tracking_uri or cfg.paths.mlruns.resolve().as_uri()


def connect(cfg: Config) -> None:
    """Point MLflow at the configured tracking server (or the embedded file store) and experiment;
    on Databricks the model registry is Unity Catalog's."""
    import mlflow

    if not cfg.training.tracking_uri:
        # MLflow 3 keeps the file store behind an opt-in; its sqlite store would need SQLAlchemy and
        # Alembic, which the skinny client does not bring.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if cfg.training.tracking_uri == "databricks":
        mlflow.set_registry_uri("databricks-uc")
    mlflow.set_experiment(cfg.training.experiment)


def log_training(cfg: Config, spec: TrainSpec, outcome: TrainOutcome) -> str:
    """Record one finished training in MLflow; returns the MLflow run id."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from segmentation.train import model as model_io

    connect(cfg)
    model_file = Path(outcome.model_path)
    model, model_spec = model_io.load(model_file)
    example = np.zeros((2, model_spec.input_dim), dtype=np.float32)
    with torch.no_grad():  # the logged model's forward is the reconstruction
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    settings = {k: v for k, v in asdict(spec).items() if k not in NOT_PARAMS}
    settings["max_steps_per_epoch"] = cfg.training.max_steps_per_epoch
    with mlflow.start_run(run_name=spec.version) as run, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation notices are not the user's business
        mlflow.log_params(
            {k: str(v) for k, v in settings.items()}
            | {"model_version": spec.version, "world_size": outcome.world_size}
        )
        for epoch, (train_loss, val_loss) in enumerate(
            zip(outcome.losses, outcome.val_losses, strict=True), 1
        ):
            mlflow.log_metrics({"train_loss": train_loss, "val_loss": val_loss}, step=epoch)
        mlflow.pytorch.log_model(
            model, name="model", signature=signature, input_example=example, pip_requirements=["torch"]
        )
        mlflow.log_artifact(str(model_file), artifact_path="weights")
        log.info("train: tracked as MLflow run %s in %s", run.info.run_id, tracking_uri(cfg))
        return run.info.run_id
