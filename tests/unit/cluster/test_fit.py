"""Restarts: the kept fit is the lowest-cost one of the seeds tried."""

from dataclasses import replace

import numpy as np
import pytest
from pyspark.ml.functions import array_to_vector

from segmentation.cluster import fit


@pytest.mark.slow
def test_restarts_keep_the_lowest_cost_fit(spark, cfg):
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=3.0, size=(12, 3))
    points = centres[rng.integers(0, 12, 600)] + rng.normal(size=(600, 3))
    frame = spark.createDataFrame([([float(v) for v in row],) for row in points], "values array<double>")
    frame = frame.withColumn("vector", array_to_vector("values")).cache()
    # two iterations from each start, so that seeds end at visibly different costs
    settings = replace(cfg.clustering, max_iter=2, restarts=4)
    single = [
        fit(frame, "kmeans", 8, replace(settings, seed=settings.seed + i, restarts=1)).summary.trainingCost
        for i in range(4)
    ]
    best = fit(frame, "kmeans", 8, settings).summary.trainingCost
    assert len(set(np.round(single, 6))) > 1  # the seeds do differ, so the choice is a real one
    assert best == pytest.approx(min(single), rel=1e-9)
    frame.unpersist()
