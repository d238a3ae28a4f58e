"""Stage `cluster`: embeddings (and, as the baseline, scaled raw features) → segments.

Every (representation, algorithm, k) is fitted with MLlib on the same cached vectors and evaluated;
the best embedding partition by silhouette becomes `user_segments`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.cluster.metrics import centroids, cluster_stats, silhouette, with_distance
from segmentation.config import ClusteringConfig, Config
from segmentation.errors import StageError
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
    "stability_ari double, selected boolean"
)


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
    results: list[Evaluation] = []
    best: tuple[float, str, int] | None = None
    n_users = 0
    for representation, frame in spaces.items():
        points = frame.withColumn("vector", array_to_vector("values")).cache()
        n_users = points.count()
        if n_users < max(cfg.clustering.k):
            points.unpersist()
            raise StageError(
                f"{n_users} users cannot make {max(cfg.clustering.k)} segments: lower clustering.k"
            )
        for algorithm in cfg.clustering.algorithms:
            for k in cfg.clustering.k:
                describe(spark, f"cluster: {representation} {algorithm} k={k}")
                result = evaluate(
                    assign_segments(points, algorithm, k, cfg.clustering), representation, algorithm, k
                )
                log.info(
                    "cluster: %-9s %-16s k=%d silhouette=%s CH=%s DB=%s",
                    representation,
                    algorithm,
                    k,
                    _fmt(result.silhouette),
                    _fmt(result.calinski_harabasz),
                    _fmt(result.davies_bouldin),
                )
                results.append(result)
                if representation == "embedding" and result.silhouette is not None:
                    if best is None or result.silhouette > best[0]:
                        best = (result.silhouette, algorithm, k)
        points.unpersist()
    if best is None:
        raise StageError("no embedding partition could be evaluated")
    _, algorithm, k = best
    for result in results:
        result.selected = (result.representation, result.algorithm, result.k) == ("embedding", algorithm, k)
    log.info("cluster: selected embedding %s k=%d (silhouette %.4f)", algorithm, k, best[0])
    segments = _write_selected(spark, store, spaces["embedding"], algorithm, k, cfg, run_id)
    _write_evaluation(spark, store, results, run_id)
    return StageResult(
        rows_in=n_users,
        rows_out=segments,
        details={
            "selected": {"algorithm": algorithm, "k": k, "silhouette": best[0]},
            "evaluations": [asdict(r) for r in results],
        },
    )


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
        )
        for r in results
    ]
    frame = spark.createDataFrame(rows, EVALUATION_SCHEMA)
    if store.exists(CLUSTERING_EVALUATION):
        store.overwrite_partitions(frame, CLUSTERING_EVALUATION, ["run_id"])
    else:
        store.overwrite(frame, CLUSTERING_EVALUATION, ["run_id"])
