"""Fitting: k-means from a driver sample refined by MLlib, and restarts that keep the lowest-cost fit."""

from dataclasses import replace

import numpy as np
import pytest
from pyspark.ml.clustering import KMeansModel
from pyspark.ml.functions import array_to_vector
from sklearn.cluster import KMeans as LocalKMeans

from segmentation.cluster.fit import apply_model, fit
from segmentation.cluster.kmeans import driver_sample, users_sample


@pytest.fixture
def blobs(spark):
    """600 points around 12 centres in 3 dimensions, as `values` (array) and `vector`, cached."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=3.0, size=(12, 3))
    points = centres[rng.integers(0, 12, 600)] + rng.normal(size=(600, 3))
    frame = spark.createDataFrame([([float(v) for v in row],) for row in points], "values array<double>")
    frame = frame.withColumn("vector", array_to_vector("values")).cache()
    yield points, frame
    frame.unpersist()


@pytest.mark.slow
def test_restarts_keep_the_lowest_cost_fit(blobs, cfg):
    _, frame = blobs
    # two iterations from each k-means|| start, so that seeds end at visibly different costs
    settings = replace(cfg.clustering, init_mode="k-means||", max_iter=2, restarts=4)
    single = [
        fit(frame, "kmeans", 8, replace(settings, seed=settings.seed + i, restarts=1)).summary.trainingCost
        for i in range(4)
    ]
    best = fit(frame, "kmeans", 8, settings).summary.trainingCost
    assert len(set(np.round(single, 6))) > 1  # the seeds do differ, so the choice is a real one
    assert best == pytest.approx(min(single), rel=1e-9)


def test_sample_start_is_refined_by_mllib_into_an_ml_model(blobs, cfg):
    points, frame = blobs
    settings = replace(cfg.clustering, init_mode="sample", init_restarts=10)
    model = fit(frame, "kmeans", 12, settings)
    # every point is in the sample here, so the start is scikit-learn's best of 10 on the same points;
    # MLlib's iterations from that converged start must not move it, and must report its cost
    local = LocalKMeans(n_clusters=12, n_init=10, random_state=settings.seed).fit(points)
    assert isinstance(model, KMeansModel)
    assert model.summary.trainingCost == pytest.approx(local.inertia_, rel=1e-6)
    assert model.summary.numIter <= 2
    centres = np.array(sorted(map(tuple, model.clusterCenters())))
    assert centres == pytest.approx(np.array(sorted(map(tuple, local.cluster_centers_))), abs=1e-6)
    assert apply_model(model, frame).select("segment_id").distinct().count() == 12


def test_driver_sample_is_bounded(spark):
    frame = spark.range(5000).selectExpr("array(cast(id as double), 1.0D) as values")
    frame = frame.withColumn("vector", array_to_vector("values"))
    sample = driver_sample(frame, "vector", 1000, seed=7)
    assert sample.shape[1] == 2
    assert 800 <= len(sample) <= 1200
    assert (sample[:, 1] == 1.0).all() and len(np.unique(sample[:, 0])) == len(sample)
    assert len(driver_sample(frame.limit(300), "vector", 1000, seed=7)) == 300


def test_users_sample_is_the_same_users_in_the_same_order_however_partitioned(spark):
    users = spark.createDataFrame([(f"u{i:05d}", float(i)) for i in range(5000)], "user_id string, x double")

    def ids(frame, rows, seed=7):
        return [r.user_id for r in users_sample(frame, rows, seed).collect()]

    one, many = ids(users.repartition(1), 1000), ids(users.repartition(7), 1000)
    assert one == many == sorted(one)
    assert 850 <= len(one) <= 1150  # about `rows`, by hash
    assert ids(users, 1000, seed=8) != one  # another seed, other users
    assert ids(users.repartition(3), 10_000) == sorted(f"u{i:05d}" for i in range(5000))  # all when fewer
