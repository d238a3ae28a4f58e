"""The segmenter in MLflow's model registry. Each fit that `cluster/pyfunc.py` covers is logged as one
pyfunc model (raw features → segment id) under an MLflow run that also holds the clustering's metrics
(and, once the report stage has run, the report), registered as a new version of one model (Unity
Catalog's registry on Databricks, the embedded file store here), tagged with its cluster run, and the
`champion` alias moved to it. `assign` scores with the champion (`champion_run`): a promotion or
rollback done in the registry republishes that fit's segments first (`promotion.py`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame

import segmentation
from segmentation.cluster import pyfunc
from segmentation.cluster.segmenter import Segmenter
from segmentation.config import Config
from segmentation.features.scaling import Scaler
from segmentation.stage import StageContext
from segmentation.train.tracking import connect

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_TAG = "segmentation.cluster_run"  # on the MLflow run and the model version: the cluster run id
ARTIFACT = "segmenter"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    mlflow_run_id: str


def enabled(cfg: Config) -> bool:
    return cfg.clustering.register and cfg.training.tracking


def model_name(cfg: Config) -> str:
    """The registered model's name: three-level in Unity Catalog (storage.catalog set)."""
    if cfg.storage.catalog:
        return f"{cfg.storage.catalog}.{cfg.storage.schema}.{cfg.clustering.model_name}"
    return cfg.clustering.model_name


def register(
    ctx: StageContext, segmenter: Segmenter, model, centroids: DataFrame, metrics: dict[str, float]
) -> Registered | None:
    """Log and register the fitted segmenter and move `champion` to it; None when registration is off
    or the fit is one the pyfunc model does not cover. `centroids`: segment_id, centroid (k rows)."""
    cfg = ctx.cfg
    if not enabled(cfg):
        return None
    if not pyfunc.supported(segmenter.algorithm, segmenter.representation):
        # the previous champion no longer describes the published segments: without an alias,
        # assign follows the lake's own pointer
        dropped = _drop_champion(cfg)
        log.warning(
            "cluster: %s on %s is not registered in MLflow (the pyfunc segmenter covers %s on %s)%s",
            segmenter.algorithm,
            segmenter.representation,
            "/".join(pyfunc.ALGORITHMS),
            "/".join(pyfunc.REPRESENTATIONS),
            f"; the `{CHAMPION}` alias of {model_name(cfg)} was removed" if dropped else "",
        )
        return None
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    scaler = Scaler.load(ctx.paths.scaling(segmenter.features_run_id))
    encoder = {
        "raw": None,
        "embedding": ctx.paths.model(segmenter.autoencoder_version),
        "idec": ctx.paths.refined_model(segmenter.encoder_version or ""),
    }[segmenter.representation]
    by_segment = {r["segment_id"]: list(r["centroid"]) for r in centroids.collect()}  # k rows
    directory = ctx.paths.segmenter(segmenter.run_id)
    tree = pyfunc.bisecting_tree(directory / "model") if segmenter.algorithm == "bisecting_kmeans" else None
    artifacts = pyfunc.export(
        directory / "pyfunc",
        asdict(segmenter),
        asdict(scaler),
        np.asarray(model.clusterCenters()),
        by_segment,
        encoder,
        tree,
    )
    name = model_name(cfg)
    connect(cfg)
    with mlflow.start_run(run_name=f"cluster {segmenter.run_id}") as run, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own notices (integer columns ...) are not the user's
        signature = infer_signature(
            pd.DataFrame({feature: [0.0] for feature in scaler.feature_names}),
            pd.DataFrame({"segment_id": np.zeros(1, np.int32), "distance": np.zeros(1)}),
        )
        mlflow.set_tags({RUN_TAG: segmenter.run_id})
        mlflow.log_params(
            {
                "algorithm": segmenter.algorithm,
                "representation": segmenter.representation,
                "k": segmenter.k,
                "features_run_id": segmenter.features_run_id,
                "autoencoder_version": segmenter.autoencoder_version,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT,
            python_model=str(Path(pyfunc.__file__).with_name("pyfunc_entry.py")),  # from code, not a pickle
            artifacts=artifacts,
            signature=signature,
            # the package itself travels with the model, so serving needs only these
            code_paths=[str(Path(segmentation.__file__).parent)],
            pip_requirements=["numpy", "pandas", "torch", "mlflow-skinny"],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(name, version, RUN_TAG, segmenter.run_id)
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info(
        "cluster: registered %s version %s (MLflow run %s) as %s", name, version, run.info.run_id, CHAMPION
    )
    return Registered(name, version, run.info.run_id)


def _drop_champion(cfg: Config) -> bool:
    """Remove the `champion` alias; False when there was none."""
    from mlflow import MlflowClient

    if champion_run(cfg) is None:
        return False
    MlflowClient().delete_registered_model_alias(model_name(cfg), CHAMPION)
    return True


def champion_run(cfg: Config) -> str | None:
    """The cluster run of the `champion` version; None when registration is off or nothing is
    registered yet."""
    if not enabled(cfg):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    connect(cfg)
    try:
        version = MlflowClient().get_model_version_by_alias(model_name(cfg), CHAMPION)
    except MlflowException as exc:
        # no such model, or (the file store's word for it) no such alias
        absent = exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
            exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
        )
        if absent:
            return None
        raise
    return version.tags.get(RUN_TAG)


def log_report(cfg: Config, cluster_run: str, path: Path) -> str | None:
    """Attach the report to the MLflow run of `cluster_run`'s registration; its MLflow run id, or None
    when there is none (registration off, or a fit the pyfunc model does not cover)."""
    if not enabled(cfg):
        return None
    import mlflow
    from mlflow import MlflowClient

    connect(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.training.experiment)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{cluster_run}'", max_results=1
    )
    if not runs:
        return None
    MlflowClient().log_artifact(runs[0].info.run_id, str(path), artifact_path="report")
    return runs[0].info.run_id
