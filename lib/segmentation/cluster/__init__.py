"""Stage `cluster`: embeddings (and, as the baseline, scaled raw features) → segments.

Every (representation, algorithm, k) is fitted with MLlib on the same cached vectors and evaluated;
the best embedding partition by silhouette becomes `user_segments`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.cluster.metrics import (
    adjusted_rand,
    centroids,
    cluster_stats,
    contingency,
    normalized_mutual_info,
    silhouette,
    with_distance,
)
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
    "davies_bouldin_common double"
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
    ari_truth: float | None = None
    nmi_truth: float | None = None


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
    raise StageError(
        f"clustering.algorithms: unknown algorithm {algorithm!r}"
    )  # config validation guards this


def assign_segments(points: DataFrame, algorithm: str, k: int, cfg: ClusteringConfig) -> DataFrame:
    """Input: user_id, `values` (array<float>), `vector`. Output: the input plus `segment_id` (int)."""
    model = estimator(algorithm, k, cfg).fit(points)
    return model.transform(points).withColumn("segment_id", F.col("segment_id").cast("int"))


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


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    embeddings = store.read_or_fail(USER_EMBEDDINGS, "cluster")
    features = store.read_or_fail(USER_FEATURES, "cluster")
    spaces = {
        "embedding": embeddings.select("user_id", F.col("embedding").alias("values")),
        "raw": features.select("user_id", F.col("features").alias("values")),
    }
    points = {
        rep: frame.withColumn("vector", array_to_vector("values")).cache() for rep, frame in spaces.items()
    }
    truth = _planted_truth(spark, cfg)
    results: list[Evaluation] = []
    best: tuple[float, str, int] | None = None
    try:
        n_users = points["embedding"].count()
        if n_users < max(cfg.clustering.k):
            raise StageError(
                f"{n_users} users cannot make {max(cfg.clustering.k)} segments: lower clustering.k"
            )
        for representation, space in points.items():
            for algorithm in cfg.clustering.algorithms:
                for k in cfg.clustering.k:
                    describe(spark, f"cluster: {representation} {algorithm} k={k}")
                    result = _evaluate_partition(
                        space, points[COMMON_SPACE], truth, representation, algorithm, k, cfg
                    )
                    log.info(
                        "cluster: %-9s %-16s k=%d silhouette=%s (common space %s) CH=%s DB=%s stability=%s%s",
                        representation,
                        algorithm,
                        k,
                        _fmt(result.silhouette),
                        _fmt(result.silhouette_common),
                        _fmt(result.calinski_harabasz),
                        _fmt(result.davies_bouldin),
                        _fmt(result.stability_ari),
                        f" ARI vs truth={result.ari_truth:.3f}" if result.ari_truth is not None else "",
                    )
                    results.append(result)
                    if representation == "embedding" and result.silhouette is not None:
                        if best is None or result.silhouette > best[0]:
                            best = (result.silhouette, algorithm, k)
    finally:
        for frame in points.values():
            frame.unpersist()
    if best is None:
        raise StageError("no embedding partition could be evaluated")
    _, algorithm, k = best
    for result in results:
        result.selected = (result.representation, result.algorithm, result.k) == ("embedding", algorithm, k)
    chosen = next(r for r in results if r.selected)
    log.info("cluster: selected embedding %s k=%d (silhouette %.4f)", algorithm, k, best[0])
    segments = _write_selected(spark, store, spaces["embedding"], algorithm, k, cfg, run_id)
    _write_evaluation(spark, store, results, run_id)
    return StageResult(
        rows_in=n_users,
        rows_out=segments,
        details={
            "selected": {
                "algorithm": algorithm,
                "k": k,
                **{
                    key: getattr(chosen, key)
                    for key in ("silhouette", "stability_ari", "ari_truth", "nmi_truth")
                },
            },
            "evaluations": [asdict(r) for r in results],
        },
    )


def _evaluate_partition(
    space: DataFrame,
    common: DataFrame,
    truth: DataFrame | None,
    representation: str,
    algorithm: str,
    k: int,
    cfg: Config,
) -> Evaluation:
    """Fit one partition and score it: in its own space, in the common space, against a second seed
    (stability) and, for generated data, against the planted truth."""
    assigned = assign_segments(space, algorithm, k, cfg.clustering).cache()
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
        reseeded = replace(cfg.clustering, seed=cfg.clustering.seed + 1)
        other = assign_segments(space, algorithm, k, reseeded).select(
            "user_id", F.col("segment_id").alias("other")
        )
        result.stability_ari = adjusted_rand(
            contingency(labels.join(other, "user_id"), "segment_id", "other")
        )
        if truth is not None:
            table = contingency(labels.join(truth, "user_id"), "segment", "segment_id")
            result.ari_truth, result.nmi_truth = adjusted_rand(table), normalized_mutual_info(table)
        return result
    finally:
        assigned.unpersist()


def _planted_truth(spark: SparkSession, cfg: Config) -> DataFrame | None:
    """For generated logs, the planted segment of each user (from `segment generate`), else None."""
    path = truth_path(cfg)
    if not path.is_dir():
        return None
    return spark.read.json(str(path)).select("user_id", "segment")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write_selected(spark, store, frame: DataFrame, algorithm: str, k: int, cfg: Config, run_id: str) -> int:
    points = frame.withColumn("vector", array_to_vector("values"))
    describe(spark, f"cluster: write segments ({algorithm} k={k})")
    assigned = assign_segments(points, algorithm, k, cfg.clustering).drop("vector").cache()
    try:
        centres = centroids(assigned, "values", "segment_id").cache()
        tags = [F.lit(algorithm).alias("algorithm"), F.lit(k).alias("k"), F.lit(run_id).alias("run_id")]
        segments = with_distance(assigned, centres, "values", "segment_id").select(
            "user_id", "segment_id", "distance", *tags, F.lit("embedding").alias("representation")
        )
        store.overwrite(segments, USER_SEGMENTS)
        store.overwrite(
            centres.select("segment_id", F.col("n").alias("size"), "centroid", *tags), SEGMENT_CENTROIDS
        )
        centres.unpersist()
        n_segmented = store.read(USER_SEGMENTS).count()
        store.overwrite(
            _profiles(store.read(USER_SEGMENTS), store.read(USER_FEATURES), n_segmented, run_id),
            SEGMENT_PROFILES,
        )
        return n_segmented
    finally:
        assigned.unpersist()


def _profiles(segments: DataFrame, features: DataFrame, n_users: int, run_id: str) -> DataFrame:
    """Per segment: size, share of users and the mean of every raw feature (interpretable units)."""
    names = [c for c in features.columns if c not in ("user_id", "features", "as_of", "run_id")]
    per_segment = (
        segments.join(features.select("user_id", *names), "user_id")
        .groupBy("segment_id")
        .agg(F.count("*").alias("n_users"), *[F.avg(c).alias(f"mean_{c}") for c in names])
    )
    return per_segment.select(
        "segment_id",
        "n_users",
        (F.col("n_users") / F.lit(n_users)).alias("share"),
        *[f"mean_{c}" for c in names],
        F.lit(run_id).alias("run_id"),
    )


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
        )
        for r in results
    ]
    frame = spark.createDataFrame(rows, EVALUATION_SCHEMA)
    if store.exists(CLUSTERING_EVALUATION):
        store.overwrite_partitions(frame, CLUSTERING_EVALUATION, ["run_id"])
    else:
        store.overwrite(frame, CLUSTERING_EVALUATION, ["run_id"])
