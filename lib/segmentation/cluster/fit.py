"""Fitting MLlib clusterers on a vector column, applying them, and the refit stability compares with."""

from __future__ import annotations

import logging
from dataclasses import replace

from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, GaussianMixtureModel, KMeans
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.cluster import kmeans
from segmentation.cluster.density import DensityModel, fit_density
from segmentation.config import ClusteringConfig
from segmentation.errors import StageError

log = logging.getLogger(__name__)


def vector_column(representation: str) -> str:
    return f"{representation}_vector"


def estimator(
    algorithm: str, k: int, cfg: ClusteringConfig, features: str = "vector", seed: int | None = None
):
    common = {
        "k": k,
        "seed": cfg.seed if seed is None else seed,
        "maxIter": cfg.max_iter,
        "featuresCol": features,
        "predictionCol": "segment_id",
    }
    if algorithm == "kmeans":
        return KMeans(**common, initSteps=cfg.init_steps)
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(**common)
    if algorithm == "gaussian_mixture":
        log.warning(
            "clustering.algorithms: gaussian_mixture is MLlib's EM, which can hang when a component "
            "collapses (its covariance's eigendecomposition never returns; seen once in this project's "
            "tests, 18 min in one task): give the job a timeout"
        )
        return GaussianMixture(**common, probabilityCol="segment_probability")
    raise StageError(
        f"clustering.algorithms: unknown algorithm {algorithm!r}"
    )  # config validation guards this


def fit(points: DataFrame, algorithm: str, k: int, cfg: ClusteringConfig, features: str = "vector"):
    """Fit one clusterer on the vector column `features` of `points`.

    K-means starts, by default (`cfg.init_mode` sample), from a bounded driver sample and is refined
    by MLlib over all rows (`kmeans.fit_from_sample`, which says why). Gaussian mixtures, and k-means
    under `init_mode` k-means||, keep the best by training cost of `cfg.restarts` fits under seeds
    cfg.seed, cfg.seed + 1, ... (as scikit-learn's n_init).
    Bisecting k-means is fitted once: its divisive 2-means splits gave the same partition under other
    seeds (stability_ari 0.99 on the same data), and each of its fits costs a job per level.
    """
    # Fitting on a projection to the one vector column, not on the cached frame itself, measured 1.5x
    # (32k x 8) to 3.5x (1M x 16, 20 iterations) faster here.
    vectors = points.select(features)
    if algorithm == "hdbscan":  # k is what HDBSCAN finds (cluster/density.py)
        sample = kmeans.driver_sample(vectors, features, cfg.selection_sample_rows, cfg.seed)
        return fit_density(sample, cfg.min_segment_share, cfg.seed)
    if algorithm == "kmeans" and cfg.init_mode == "sample":
        template = estimator(algorithm, k, cfg, features)
        return kmeans.fit_from_sample(vectors, template, cfg.init_sample_rows, cfg.init_restarts)
    restarts = 1 if algorithm == "bisecting_kmeans" else cfg.restarts
    best, best_cost = None, float("inf")
    for seed in range(cfg.seed, cfg.seed + restarts):
        model = estimator(algorithm, k, cfg, features, seed).fit(vectors)
        cost = _training_cost(model)
        if cost < best_cost:
            best, best_cost = model, cost
    return best


def _training_cost(model) -> float:
    summary = model.summary
    if isinstance(model, GaussianMixtureModel):
        return -summary.logLikelihood
    return summary.trainingCost


def apply_model(
    model, points: DataFrame, features: str = "vector", prediction: str = "segment_id"
) -> DataFrame:
    """`points` plus `prediction` (int): each row's segment under `model`, read from the vector column
    `features` (a copy of the model is parameterized, so models are safe to share across threads)."""
    if isinstance(model, DensityModel):
        return model.transform(points, features, prediction)
    params = {model.featuresCol: features, model.predictionCol: prediction}
    if isinstance(model, GaussianMixtureModel):
        params[model.probabilityCol] = "_probability"
    out = model.transform(points, params).withColumn(prediction, F.col(prediction).cast("int"))
    return out.drop("_probability")


def stability_model(points: DataFrame, algorithm: str, k: int, representation: str, cfg: ClusteringConfig):
    """The refit that `stability_ari` compares a partition with: the same procedure under other seeds,
    on a random `stability_fraction` of the users (subsample) or on all of them (seed); None when off."""
    if cfg.stability == "off":
        return None
    reseeded = replace(cfg, seed=cfg.seed + cfg.restarts)  # seeds no fit of the partition itself used
    sample = (
        points.sample(fraction=cfg.stability_fraction, seed=reseeded.seed)
        if cfg.stability == "subsample"
        else points
    )
    return fit(sample, algorithm, k, reseeded, vector_column(representation))
