"""Clustering quality metrics computed in Spark from per-cluster sufficient statistics.

MLlib has silhouette (`ClusteringEvaluator`) but neither Calinski-Harabasz nor Davies-Bouldin. All
three follow from per-cluster counts, sums and sums of squared norms (k rows, however many users), so
`partition_stats` computes every metric of a partition, in several spaces at once, in two passes over
the points, where one evaluator call per metric and space would each scan them again. Silhouette is
the same exact squared-Euclidean one `ClusteringEvaluator` computes; CH and DB match scikit-learn's
`calinski_harabasz_score` and `davies_bouldin_score`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.arrays import list_column_matrix


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


@dataclass(frozen=True)
class SpaceStats:
    """Quality of one partition measured in one space."""

    wssse: float
    calinski_harabasz: float | None
    davies_bouldin: float | None
    silhouette: float | None


@dataclass(frozen=True)
class PartitionStats:
    n: int
    sizes: dict[int, int]
    spaces: dict[str, SpaceStats]
    crosstabs: dict[str, np.ndarray]  # partition (rows, by cluster id) x another labelling (columns)


def partition_stats(
    points: DataFrame, cluster: str, spaces: dict[str, str], crosstab: tuple[str, ...] = ()
) -> PartitionStats:
    """WSSSE, Calinski-Harabasz, Davies-Bouldin and silhouette of the partition `cluster` in every space
    of `spaces` (name -> array column), and its contingency table against each `crosstab` labelling.

    Two passes over `points` whatever the number of spaces: per-cluster sufficient statistics (counts,
    sums, sums of squared norms: k rows per label combination reach the driver), then, with those
    broadcast, every point's distance to its centroid and its silhouette. Silhouette is the exact
    squared-Euclidean one MLlib's `ClusteringEvaluator` computes; CH and DB follow scikit-learn.
    """
    keys = [cluster, *crosstab]
    sums = (
        points.groupBy(*keys)
        .agg(
            F.count("*").alias("_n"),
            *[Summarizer.sum(array_to_vector(F.col(c))).alias(f"_sum_{name}") for name, c in spaces.items()],
            *[F.sum(squared_norm(F.col(c))).alias(f"_sq_{name}") for name, c in spaces.items()],
        )
        .collect()
    )
    labels = sorted({r[cluster] for r in sums})
    index = {label: i for i, label in enumerate(labels)}
    n_c = np.zeros(len(labels))
    totals = {name: None for name in spaces}
    sq = {name: np.zeros(len(labels)) for name in spaces}
    for r in sums:
        i = index[r[cluster]]
        n_c[i] += r["_n"]
        for name in spaces:
            vector = r[f"_sum_{name}"].toArray()
            if totals[name] is None:
                totals[name] = np.zeros((len(labels), len(vector)))
            totals[name][i] += vector
            sq[name][i] += r[f"_sq_{name}"]
    means = {name: totals[name] / n_c[:, None] for name in spaces}
    spreads, silhouettes = _point_pass(points, cluster, spaces, labels, n_c, means, sq)
    crosstabs = {other: contingency_from_rows(sums, cluster, other, weight="_n") for other in crosstab}
    n = float(n_c.sum())
    return PartitionStats(
        int(n),
        {int(label): int(c) for label, c in zip(labels, n_c, strict=True)},
        {name: _space_stats(n_c, means[name], sq[name], spreads[name], silhouettes[name]) for name in spaces},
        crosstabs,
    )


def _point_pass(
    points: DataFrame,
    cluster: str,
    spaces: dict[str, str],
    labels: list[int],
    n_c: np.ndarray,
    means: dict[str, np.ndarray],
    sq: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, float | None]]:
    """Per space: the mean Euclidean distance of each cluster's points to its centroid (for DB) and the
    mean silhouette over all points; numpy over Arrow batches, per-cluster partial sums out."""
    names = list(spaces)
    label_array = np.array(labels)
    mean_sq = {name: sq[name] / n_c for name in names}  # mean squared norm of each cluster's points

    def partials(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        k = len(labels)
        count = np.zeros(k)
        dist = {name: np.zeros(k) for name in names}
        sil = {name: np.zeros(k) for name in names}
        for batch in batches:
            own = np.searchsorted(label_array, batch.column(0).to_numpy(zero_copy_only=False))
            count += np.bincount(own, minlength=k)
            rows = np.arange(len(own))
            for j, name in enumerate(names):
                x = list_column_matrix(batch.column(j + 1), np.float64)
                norms = (x * x).sum(axis=1)
                cross = x @ means[name].T
                to_centroid = norms[:, None] - 2 * cross + (means[name] ** 2).sum(axis=1)[None, :]
                dist[name] += np.bincount(own, np.sqrt(np.maximum(to_centroid[rows, own], 0)), minlength=k)
                if k > 1:
                    # mean squared distance to the points of each cluster, excluding the point itself
                    avg = np.maximum(norms[:, None] - 2 * cross + mean_sq[name][None, :], 0)
                    size = n_c[own]
                    a = np.where(size > 1, avg[rows, own] * size / np.maximum(size - 1, 1), 0.0)
                    avg[rows, own] = np.inf
                    b = avg.min(axis=1)
                    top = np.maximum(a, b)
                    s = np.where((size > 1) & (top > 0), (b - a) / np.where(top > 0, top, 1), 0.0)
                    sil[name] += np.bincount(own, s, minlength=k)
        columns = [pa.array(np.arange(k, dtype=np.int32)), pa.array(count)]
        for name in names:
            columns += [pa.array(dist[name]), pa.array(sil[name])]
        yield pa.RecordBatch.from_arrays(columns, names=_partial_columns(names))

    schema = ", ".join(f"{c} {'int' if c == '_i' else 'double'}" for c in _partial_columns(names))
    columns = [F.col(cluster), *[F.col(spaces[name]) for name in names]]
    totals = (
        points.select(*columns)
        .mapInArrow(partials, schema)
        .groupBy("_i")
        .agg(*[F.sum(c).alias(c) for c in _partial_columns(names)[1:]])
        .collect()  # k rows
    )
    by_cluster = {r["_i"]: r for r in totals}
    spreads, silhouettes = {}, {}
    for name in names:
        spreads[name] = np.array(
            [by_cluster[i][f"_dist_{name}"] / n_c[i] if i in by_cluster else 0.0 for i in range(len(labels))]
        )
        silhouettes[name] = (
            float(sum(r[f"_sil_{name}"] for r in totals) / n_c.sum()) if len(labels) > 1 else None
        )
    return spreads, silhouettes


def _partial_columns(names: list[str]) -> list[str]:
    return ["_i", "_n"] + [c for name in names for c in (f"_dist_{name}", f"_sil_{name}")]


def _space_stats(
    n_c: np.ndarray, mu: np.ndarray, sum_sq: np.ndarray, spread: np.ndarray, silhouette: float | None
) -> SpaceStats:
    n = float(n_c.sum())
    k = len(n_c)
    within = max(float(np.sum(sum_sq - n_c * np.sum(mu**2, axis=1))), 0.0)
    ch = db = None
    if 1 < k < n:
        overall = (n_c[:, None] * mu).sum(axis=0) / n
        between = float(np.sum(n_c * np.sum((mu - overall) ** 2, axis=1)))
        ch = (between / (k - 1)) / (within / (n - k)) if within > 0 else float("inf")
        gaps = np.sqrt(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2))
        gaps[gaps == 0] = np.inf  # as scikit-learn: coincident centroids add nothing
        ratio = (spread[:, None] + spread[None, :]) / gaps
        np.fill_diagonal(ratio, -np.inf)
        db = float(np.mean(ratio.max(axis=1)))
    return SpaceStats(within, ch, db, silhouette)


def contingency(pairs: DataFrame, left: str, right: str) -> np.ndarray:
    """Counts of (left label, right label) pairs as a k1 × k2 matrix (k1 × k2 rows reach the driver)."""
    return contingency_from_rows(pairs.groupBy(left, right).count().collect(), left, right, "count")


def contingency_from_rows(rows: list, left: str, right: str, weight: str) -> np.ndarray:
    """The left × right matrix of the summed `weight` of rows holding (left, right) label pairs."""
    lefts = sorted({r[left] for r in rows}, key=str)
    rights = sorted({r[right] for r in rows}, key=str)
    table = np.zeros((len(lefts), len(rights)))
    li = {v: i for i, v in enumerate(lefts)}
    ri = {v: i for i, v in enumerate(rights)}
    for r in rows:
        table[li[r[left]], ri[r[right]]] += r[weight]
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
