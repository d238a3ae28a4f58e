"""Density segments (cluster/density.py): HDBSCAN on a sample, every user assigned or left as noise."""

import numpy as np
import pytest
from pyspark.ml.functions import array_to_vector

from segmentation.cluster.density import NOISE, DensityModel, fit_density
from segmentation.errors import StageError


def rings_and_outliers(seed: int = 0):
    """Two concentric rings (not separable by any centre-based partition) and far outliers."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, 1200)
    radius = np.where(np.arange(1200) < 600, 1.0, 4.0) + rng.normal(0, 0.08, 1200)
    rings = np.c_[radius * np.cos(angle), radius * np.sin(angle)]
    outliers = rng.uniform(8, 12, (20, 2)) * rng.choice([-1, 1], (20, 2))
    return rings, np.repeat([0, 1], 600), outliers


def test_rings_become_two_segments_and_far_points_noise():
    rings, truth, outliers = rings_and_outliers()
    model = fit_density(rings, min_share=0.05, seed=1)
    assert model.k == 2
    found = model.predict(rings)
    inner = np.bincount(found[truth == 0][found[truth == 0] >= 0]).argmax()
    assert (found[truth == 0] == inner).mean() > 0.95 and (found[truth == 1] == 1 - inner).mean() > 0.95
    assert (model.predict(outliers) == NOISE).all()


def test_saved_model_assigns_the_same(tmp_path):
    rings, _, outliers = rings_and_outliers(1)
    model = fit_density(rings, min_share=0.05, seed=1)
    model.save(tmp_path / "m")
    again = DensityModel.load(tmp_path / "m")
    points = np.vstack([rings, outliers])
    assert (again.predict(points) == model.predict(points)).all() and again.noise_share == model.noise_share


def test_uniform_noise_has_no_dense_region_to_report():
    flat = np.random.default_rng(3).uniform(0, 1, (300, 2))
    with pytest.raises(StageError, match="no dense region|hdbscan"):
        fit_density(flat, min_share=0.45, seed=1)


def test_assignment_in_spark_matches_the_driver(spark):
    rings, _, outliers = rings_and_outliers(2)
    model = fit_density(rings, min_share=0.05, seed=1)
    points = np.vstack([rings, outliers])
    frame = spark.createDataFrame(
        [(i, row.tolist()) for i, row in enumerate(points)], "id int, values array<double>"
    ).withColumn("vector", array_to_vector("values"))
    assigned = {r.id: r.segment_id for r in model.transform(frame, "vector", "segment_id").collect()}
    assert [assigned[i] for i in range(len(points))] == model.predict(points).tolist()
