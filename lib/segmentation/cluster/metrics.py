"""Clustering quality metrics computed in Spark from per-cluster sufficient statistics.

MLlib has silhouette (exact, `ClusteringEvaluator`) but neither Calinski-Harabasz nor Davies-Bouldin;
both follow from per-cluster counts, means and distance sums, which are k rows, however many users.
Definitions match scikit-learn's `calinski_harabasz_score` and `davies_bouldin_score`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class ClusterStats:
    n: int
    sizes: dict[int, int]
    wssse: float
    calinski_harabasz: float | None
    davies_bouldin: float | None


def squared_norm(arr: Column) -> Column:
    return F.aggregate(F.transform(arr, lambda x: x * x), F.lit(0.0), lambda acc, x: acc + x)


def euclidean(a: Column, b: Column) -> Column:
    diff = F.zip_with(a, b, lambda x, y: (x - y) * (x - y))
    return F.sqrt(F.aggregate(diff, F.lit(0.0), lambda acc, x: acc + x))


def centroids(points: DataFrame, features: str, cluster: str) -> DataFrame:
    """Per cluster: `n`, `centroid` (array<double>, the mean) and `sum_sq` (sum of squared norms).

    Input: a `features` array column and an integer `cluster` column. Output: one row per cluster.
    """
    return (
        points.select(
            cluster, array_to_vector(features).alias("_v"), squared_norm(F.col(features)).alias("_sq")
        )
        .groupBy(cluster)
        .agg(
            F.count("*").alias("n"),
            vector_to_array(Summarizer.mean(F.col("_v"))).alias("centroid"),
            F.sum("_sq").alias("sum_sq"),
        )
    )


def with_distance(points: DataFrame, centres: DataFrame, features: str, cluster: str) -> DataFrame:
    """Add `distance`: Euclidean distance from each point to its cluster's centroid."""
    small = F.broadcast(centres.select(cluster, "centroid"))
    return (
        points.join(small, cluster)
        .withColumn("distance", euclidean(F.col(features), F.col("centroid")))
        .drop("centroid")
    )


def cluster_stats(points: DataFrame, features: str, cluster: str) -> ClusterStats:
    """WSSSE, Calinski-Harabasz and Davies-Bouldin of the partition `cluster` in the space `features`."""
    centres = centroids(points, features, cluster).cache()
    rows = centres.collect()  # k rows
    spread = {
        r[cluster]: r["s"]
        for r in with_distance(points, centres, features, cluster)
        .groupBy(cluster)
        .agg(F.avg("distance").alias("s"))
        .collect()
    }
    centres.unpersist()
    labels = [r[cluster] for r in rows]
    n_c = np.array([r["n"] for r in rows], dtype=float)
    mu = np.array([r["centroid"] for r in rows], dtype=float)
    sum_sq = np.array([r["sum_sq"] for r in rows], dtype=float)
    n = float(n_c.sum())
    k = len(rows)
    within = float(np.sum(sum_sq - n_c * np.sum(mu**2, axis=1)))
    within = max(within, 0.0)
    ch = db = None
    if 1 < k < n:
        overall = (n_c[:, None] * mu).sum(axis=0) / n
        between = float(np.sum(n_c * np.sum((mu - overall) ** 2, axis=1)))
        ch = (between / (k - 1)) / (within / (n - k)) if within > 0 else float("inf")
        s = np.array([spread[label] for label in labels])
        gaps = np.sqrt(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2))
        gaps[gaps == 0] = np.inf  # as scikit-learn: coincident centroids add nothing
        ratio = (s[:, None] + s[None, :]) / gaps
        np.fill_diagonal(ratio, -np.inf)
        db = float(np.mean(ratio.max(axis=1)))
    return ClusterStats(
        int(n), {int(lbl): int(c) for lbl, c in zip(labels, n_c, strict=True)}, within, ch, db
    )


def silhouette(points: DataFrame, vector: str, cluster: str) -> float | None:
    """Exact silhouette (squared Euclidean, as MLlib computes it); None for a single cluster."""
    if points.select(cluster).distinct().limit(2).count() < 2:
        return None
    evaluator = ClusteringEvaluator(featuresCol=vector, predictionCol=cluster, metricName="silhouette")
    return float(evaluator.evaluate(points))


def contingency(pairs: DataFrame, left: str, right: str) -> np.ndarray:
    """Counts of (left label, right label) pairs as a k1 × k2 matrix (k1 × k2 rows reach the driver)."""
    rows = pairs.groupBy(left, right).count().collect()
    lefts = sorted({r[left] for r in rows}, key=str)
    rights = sorted({r[right] for r in rows}, key=str)
    table = np.zeros((len(lefts), len(rights)))
    li = {v: i for i, v in enumerate(lefts)}
    ri = {v: i for i, v in enumerate(rights)}
    for r in rows:
        table[li[r[left]], ri[r[right]]] = r["count"]
    return table


def adjusted_rand(table: np.ndarray) -> float:
    """Adjusted Rand index of two partitions from their contingency table (as scikit-learn)."""

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    n = float(table.sum())
    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else float((index - expected) / (maximum - expected))


def normalized_mutual_info(table: np.ndarray) -> float:
    """NMI with arithmetic-mean normalization (scikit-learn's default) from a contingency table."""
    n = table.sum()
    p = table / n
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mutual = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    return float(mutual / ((ha + hb) / 2)) if ha + hb > 0 else 0.0
