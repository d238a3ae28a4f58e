"""Distributed Calinski-Harabasz and Davies-Bouldin against scikit-learn on the same points."""

import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

from segmentation.cluster.metrics import cluster_stats


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_scikit_learn(spark, seed):
    rng = np.random.default_rng(seed)
    k = 4
    labels = rng.integers(0, k, 300)
    points = rng.normal(size=(300, 5)) + labels[:, None] * 1.5
    frame = spark.createDataFrame(
        [(int(label), [float(v) for v in row]) for label, row in zip(labels, points, strict=True)],
        "segment_id int, values array<double>",
    )
    stats = cluster_stats(frame, "values", "segment_id")
    assert stats.n == 300
    assert stats.sizes == {int(c): int((labels == c).sum()) for c in range(k)}
    assert stats.calinski_harabasz == pytest.approx(calinski_harabasz_score(points, labels), rel=1e-6)
    assert stats.davies_bouldin == pytest.approx(davies_bouldin_score(points, labels), rel=1e-6)
    centres = np.array([points[labels == c].mean(axis=0) for c in range(k)])
    wssse = sum(((points[labels == c] - centres[c]) ** 2).sum() for c in range(k))
    assert stats.wssse == pytest.approx(wssse, rel=1e-6)
