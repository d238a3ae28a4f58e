"""Stage `cluster`: embeddings (and, as the baseline, scaled raw features) → segments.

Every (representation, algorithm, k) is fitted with MLlib on the same cached vectors and evaluated in
its own space and in the common raw-feature space; `selection.select` picks the segmentation by the
configured rule and records why every other partition lost. The selected partition becomes
`user_segments`, `segment_centroids` and `segment_profiles`, and its fitted model is saved for `assign`.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.artifacts import publish
from segmentation.cluster.metrics import (
    adjusted_rand,
    centroids,
    cluster_stats,
    contingency,
    normalized_mutual_info,
    silhouette,
    with_distance,
)
from segmentation.cluster.profiles import build_profiles, feature_columns, profile_schema, segment_sums
from segmentation.cluster.selection import select
from segmentation.config import ClusteringConfig, Config
from segmentation.errors import StageError
from segmentation.generate import truth_path
from segmentation.runs import StageResult
from segmentation.spark import describe
from segmentation.storage import open_store
from segmentation.storage.names import (
    CLUSTERING_EVALUATION,
    SEGMENT_CENTROIDS,
    SEGMENT_PROFILES,
    USER_EMBEDDINGS,
    USER_FEATURES,
    USER_SEGMENTS,
)

log = logging.getLogger(__name__)

EVALUATION_SCHEMA = (
    "run_id string, representation string, algorithm string, k int, silhouette double, "
    "calinski_harabasz double, davies_bouldin double, wssse double, min_segment_share double, "
    "stability_ari double, selected boolean, silhouette_common double, calinski_harabasz_common double, "
    "davies_bouldin_common double, selection_reason string"
)
COMMON_SPACE = "raw"  # partitions of every representation are also scored on the scaled raw features


@dataclass
class Evaluation:
    representation: str
    algorithm: str
    k: int
    silhouette: float | None
    calinski_harabasz: float | None
    davies_bouldin: float | None
    wssse: float
    min_segment_share: float
    stability_ari: float | None = None
    selected: bool = False
    silhouette_common: float | None = None
    calinski_harabasz_common: float | None = None
    davies_bouldin_common: float | None = None
    selection_reason: str = ""
    ari_truth: float | None = None
    nmi_truth: float | None = None


def segmenters_dir(cfg: Config) -> Path:
    """Fitted segmentation models (one per cluster run) and the CURRENT pointer that `assign` follows."""
    return Path(cfg.artifacts_root) / "segmenters"


def estimator(algorithm: str, k: int, cfg: ClusteringConfig):
    common = {
        "k": k,
        "seed": cfg.seed,
        "maxIter": cfg.max_iter,
        "featuresCol": "vector",
        "predictionCol": "segment_id",
    }
    if algorithm == "kmeans":
        return KMeans(**common)
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(**common)
    if algorithm == "gaussian_mixture":
        return GaussianMixture(**common, probabilityCol="segment_probability")
    raise StageError(
        f"clustering.algorithms: unknown algorithm {algorithm!r}"
    )  # config validation guards this


def fit(points: DataFrame, algorithm: str, k: int, cfg: ClusteringConfig):
    """Fit one clusterer on `points` (a `vector` column)."""
    return estimator(algorithm, k, cfg).fit(points)


def apply_model(model, points: DataFrame) -> DataFrame:
    """Input: user_id, `values` (array<float>), `vector`. Output: the input plus `segment_id` (int)."""
    out = model.transform(points).withColumn("segment_id", F.col("segment_id").cast("int"))
    return out.drop("segment_probability")


def assign_segments(points: DataFrame, algorithm: str, k: int, cfg: ClusteringConfig) -> DataFrame:
    """Input: user_id, `values` (array<float>), `vector`. Output: the input plus `segment_id` (int)."""
    return apply_model(fit(points, algorithm, k, cfg), points)


def evaluate(assigned: DataFrame, representation: str, algorithm: str, k: int) -> Evaluation:
    stats = cluster_stats(assigned, "values", "segment_id")
    return Evaluation(
        representation=representation,
        algorithm=algorithm,
        k=k,
        silhouette=silhouette(assigned, "vector", "segment_id"),
        calinski_harabasz=stats.calinski_harabasz,
        davies_bouldin=stats.davies_bouldin,
        wssse=stats.wssse,
        min_segment_share=min(stats.sizes.values()) / stats.n,
    )


def _cached_points(spark: SparkSession, frame: DataFrame) -> DataFrame:
    """Vectors built once and cached for the whole k sweep, spread over at least every core."""
    cores = spark.sparkContext.defaultParallelism
    if frame.rdd.getNumPartitions() < cores:
        frame = frame.repartition(cores)
    return frame.withColumn("vector", array_to_vector("values")).cache()


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    embeddings = store.read_or_fail(USER_EMBEDDINGS, "cluster")
    features = store.read_or_fail(USER_FEATURES, "cluster")
    spaces = {
        "embedding": embeddings.select("user_id", F.col("embedding").alias("values")),
        "raw": features.select("user_id", F.col("features").alias("values")),
    }
    points = {rep: _cached_points(spark, frame) for rep, frame in spaces.items()}
    truth = _planted_truth(spark, cfg)
    results: list[Evaluation] = []
    models = {}
    try:
        n_users = points["embedding"].count()
        if n_users < max(cfg.clustering.k):
            raise StageError(
                f"{n_users} users cannot make {max(cfg.clustering.k)} segments: lower clustering.k"
            )
        candidates = [
            (representation, algorithm, k)
            for representation in points
            for algorithm in cfg.clustering.algorithms
            for k in cfg.clustering.k
        ]

        def fit_and_score(candidate: tuple[str, str, int]):
            representation, algorithm, k = candidate
            describe(spark, f"cluster: {representation} {algorithm} k={k}")
            model = fit(points[representation], algorithm, k, cfg.clustering)
            result = _evaluate_partition(
                model, points[representation], points[COMMON_SPACE], truth, representation, algorithm, k, cfg
            )
            _log_evaluation(result)
            return result, model

        # On small data each fit and metric is a handful of short Spark jobs whose cost is scheduling
        # latency, so candidates run side by side (Spark accepts jobs from several driver threads).
        with ThreadPoolExecutor(max_workers=cfg.clustering.parallelism) as pool:
            for candidate, (result, model) in zip(
                candidates, pool.map(fit_and_score, candidates), strict=True
            ):
                results.append(result)
                models[candidate] = model

        selection = select(results, cfg.clustering)
        for i, (result, reason) in enumerate(zip(results, selection.reasons, strict=True)):
            result.selected = i == selection.index
            result.selection_reason = reason
        chosen = results[selection.index]
        key = (chosen.representation, chosen.algorithm, chosen.k)
        log.info("cluster: %s %s k=%d %s", *key, chosen.selection_reason)
        baseline = None
        if any(r.representation == "raw" for r in results) and "raw" not in cfg.clustering.candidates:
            baseline = results[select(results, cfg.clustering, candidates=["raw"]).index]
        segments = _write_selected(
            spark, store, models[key], points[chosen.representation], chosen, cfg, run_id
        )
    finally:
        for frame in points.values():
            frame.unpersist()
    _save_segmenter(cfg, models[key], chosen, embeddings, features, run_id)
    _write_evaluation(spark, store, results, run_id)
    summary = ("representation", "algorithm", "k", "silhouette", "stability_ari", "ari_truth", "nmi_truth")
    return StageResult(
        rows_in=n_users,
        rows_out=segments,
        details={
            "selected": {name: getattr(chosen, name) for name in summary}
            | {"reason": chosen.selection_reason},
            "raw_baseline": {name: getattr(baseline, name) for name in summary} if baseline else None,
            "evaluations": [asdict(r) for r in results],
        },
    )


def _evaluate_partition(
    model,
    space: DataFrame,
    common: DataFrame,
    truth: DataFrame | None,
    representation: str,
    algorithm: str,
    k: int,
    cfg: Config,
) -> Evaluation:
    """Score one fitted partition: in its own space, in the common space, against a perturbed refit
    (stability) and, for generated data, against the planted truth."""
    assigned = apply_model(model, space).cache()
    try:
        result = evaluate(assigned, representation, algorithm, k)
        labels = assigned.select("user_id", "segment_id")
        if representation == COMMON_SPACE:
            in_common = result
        else:
            in_common = evaluate(common.join(labels, "user_id"), COMMON_SPACE, algorithm, k)
        result.silhouette_common = in_common.silhouette
        result.calinski_harabasz_common = in_common.calinski_harabasz
        result.davies_bouldin_common = in_common.davies_bouldin
        result.stability_ari = _stability(space, labels, algorithm, k, cfg.clustering)
        if truth is not None:
            table = contingency(labels.join(truth, "user_id"), "segment", "segment_id")
            result.ari_truth, result.nmi_truth = adjusted_rand(table), normalized_mutual_info(table)
        return result
    finally:
        assigned.unpersist()


def _stability(
    space: DataFrame, labels: DataFrame, algorithm: str, k: int, cfg: ClusteringConfig
) -> float | None:
    """ARI between `labels` and the assignment of every user by a refit under another seed, on a random
    `stability_fraction` of the users (subsample) or on all of them (seed); None when switched off."""
    if cfg.stability == "off":
        return None
    reseeded = replace(cfg, seed=cfg.seed + 1)
    sample = (
        space.sample(fraction=cfg.stability_fraction, seed=cfg.seed + 1)
        if cfg.stability == "subsample"
        else space
    )
    other = apply_model(fit(sample, algorithm, k, reseeded), space).select(
        "user_id", F.col("segment_id").alias("other")
    )
    return adjusted_rand(contingency(labels.join(other, "user_id"), "segment_id", "other"))


def _log_evaluation(result: Evaluation) -> None:
    log.info(
        "cluster: %-9s %-16s k=%d silhouette=%s (common space %s) CH=%s DB=%s smallest share=%.3f "
        "stability=%s%s",
        result.representation,
        result.algorithm,
        result.k,
        _fmt(result.silhouette),
        _fmt(result.silhouette_common),
        _fmt(result.calinski_harabasz),
        _fmt(result.davies_bouldin),
        result.min_segment_share,
        _fmt(result.stability_ari),
        f" ARI vs truth={result.ari_truth:.3f}" if result.ari_truth is not None else "",
    )


def _planted_truth(spark: SparkSession, cfg: Config) -> DataFrame | None:
    """For generated logs, the planted segment of each user (from `segment generate`), else None."""
    path = truth_path(cfg)
    if not path.is_dir():
        return None
    return spark.read.json(str(path)).select("user_id", "segment")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write_selected(
    spark: SparkSession, store, model, points: DataFrame, chosen: Evaluation, cfg: Config, run_id: str
) -> int:
    describe(spark, f"cluster: write segments ({chosen.representation} {chosen.algorithm} k={chosen.k})")
    assigned = apply_model(model, points).drop("vector").cache()
    try:
        centres = centroids(assigned, "values", "segment_id").cache()
        tags = [
            F.lit(chosen.algorithm).alias("algorithm"),
            F.lit(chosen.k).alias("k"),
            F.lit(run_id).alias("run_id"),
        ]
        segments = with_distance(assigned, centres, "values", "segment_id").select(
            "user_id",
            "segment_id",
            "distance",
            *tags,
            F.lit(chosen.representation).alias("representation"),
        )
        store.overwrite(segments, USER_SEGMENTS)
        store.overwrite(
            centres.select("segment_id", F.col("n").alias("size"), "centroid", *tags), SEGMENT_CENTROIDS
        )
        centres.unpersist()
    finally:
        assigned.unpersist()
    written = store.read(USER_SEGMENTS)
    features = store.read(USER_FEATURES)
    names = feature_columns(features)
    sums = [r.asDict() for r in segment_sums(written, features, names).collect()]  # one row per segment
    profiles = build_profiles(
        sums, names, cfg.privacy.min_segment_size, cfg.clustering.label_features, run_id
    )
    if profiles.merged_segments:
        log.info(
            "cluster: %d segments under privacy.min_segment_size=%d merged into segment -1 (other)%s",
            profiles.merged_segments,
            cfg.privacy.min_segment_size,
            f"; {profiles.suppressed_users} users withheld" if profiles.suppressed_users else "",
        )
    for row in profiles.rows:
        log.info(
            "cluster: segment %3d  %6d users (%.1f%%)  %s",
            row["segment_id"],
            row["n_users"],
            100 * row["share"],
            row["label"],
        )
    store.overwrite(spark.createDataFrame(profiles.rows, profile_schema(names)), SEGMENT_PROFILES)
    return sum(r["n_users"] for r in sums)


def _save_segmenter(
    cfg: Config, model, chosen: Evaluation, embeddings: DataFrame, features: DataFrame, run_id: str
) -> None:
    """Save the selected fitted model with what `assign` needs to score new users the same way: the
    representation, and the autoencoder and feature snapshot it was fitted on."""
    directory = segmenters_dir(cfg) / run_id
    model.write().overwrite().save(str(directory / "model"))
    manifest = {
        "run_id": run_id,
        "representation": chosen.representation,
        "algorithm": chosen.algorithm,
        "k": chosen.k,
        "autoencoder_version": embeddings.select("model_version").head()[0],
        "features_run_id": features.select("run_id").head()[0],
    }
    (directory / "segmenter.json").write_text(json.dumps(manifest, indent=2))
    publish(segmenters_dir(cfg) / "CURRENT", run_id)
    log.info("cluster: model saved to %s", directory)


def _write_evaluation(spark, store, results: list[Evaluation], run_id: str) -> None:
    rows = [
        (
            run_id,
            r.representation,
            r.algorithm,
            r.k,
            r.silhouette,
            r.calinski_harabasz,
            r.davies_bouldin,
            r.wssse,
            r.min_segment_share,
            r.stability_ari,
            r.selected,
            r.silhouette_common,
            r.calinski_harabasz_common,
            r.davies_bouldin_common,
            r.selection_reason,
        )
        for r in results
    ]
    frame = spark.createDataFrame(rows, EVALUATION_SCHEMA)
    if store.exists(CLUSTERING_EVALUATION):
        store.overwrite_partitions(frame, CLUSTERING_EVALUATION, ["run_id"])
    else:
        store.overwrite(frame, CLUSTERING_EVALUATION, ["run_id"])
