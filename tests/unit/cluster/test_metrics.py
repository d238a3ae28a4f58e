"""Distributed partition metrics against scikit-learn and MLlib's ClusteringEvaluator on the same points."""

import numpy as np
import pytest
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from segmentation.cluster.metrics import partition_stats


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_scikit_learn_and_mllib(spark, seed):
    rng = np.random.default_rng(seed)
    k = 4
    labels = rng.integers(0, k, 300)
    labels[0] = 7  # a singleton cluster: its point's silhouette is 0, as in both references
    points = rng.normal(size=(300, 5)) + labels[:, None] * 1.5
    other = rng.normal(size=(300, 3)) + (labels[:, None] % 2) * 2.0
    truth = rng.integers(0, 3, 300)
    frame = spark.createDataFrame(
        [
            (int(label), [float(v) for v in row], [float(v) for v in row2], int(t))
            for label, row, row2, t in zip(labels, points, other, truth, strict=True)
        ],
        "segment_id int, values array<double>, other array<double>, truth int",
    ).repartition(3)
    stats = partition_stats(frame, "segment_id", {"own": "values", "common": "other"}, ("truth",))
    assert stats.n == 300
    assert stats.sizes == {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    for name, space in (("own", points), ("common", other)):
        got = stats.spaces[name]
        assert got.calinski_harabasz == pytest.approx(calinski_harabasz_score(space, labels), rel=1e-6)
        assert got.davies_bouldin == pytest.approx(davies_bouldin_score(space, labels), rel=1e-6)
        assert got.silhouette == pytest.approx(
            silhouette_score(space, labels, metric="sqeuclidean"), rel=1e-6
        )
        wssse = sum(
            ((space[labels == c] - space[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels)
        )
        assert got.wssse == pytest.approx(wssse, rel=1e-6)
    evaluator = ClusteringEvaluator(featuresCol="v", predictionCol="segment_id")
    mllib = evaluator.evaluate(frame.withColumn("v", array_to_vector("values")))
    assert stats.spaces["own"].silhouette == pytest.approx(mllib, rel=1e-6)
    expected = np.array([[np.sum((labels == c) & (truth == t)) for t in range(3)] for c in np.unique(labels)])
    assert (stats.crosstabs["truth"] == expected).all()
