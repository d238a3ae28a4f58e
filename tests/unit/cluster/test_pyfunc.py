"""The pyfunc segmenter's parts: its numpy scaling is the Spark column's arithmetic, and a saved model
assigns the nearest centre's stable segment id with the distance to that segment's centroid."""

import dataclasses
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from segmentation.cluster import pyfunc
from segmentation.features.scaling import Scaler

SCALER = Scaler(
    feature_names=["n_events", "share_night", "purchase_total"],
    log1p=[True, False, True],
    mean=[1.5, 0.2, 2.0],
    std=[0.8, 0.1, 1.5],
    clip_std=3.0,
    dropped_constant=["share_return"],
    run_id="f1",
)


@pytest.mark.parametrize("netted", [{}, {"purchase_total": 0.6}], ids=["plain", "net-of-volume"])
def test_numpy_scaling_is_the_spark_columns_arithmetic(spark, netted):
    scaler = dataclasses.replace(SCALER, partial_out=netted)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(200)],
            "n_events": rng.integers(0, 500, 200).astype(float),
            "share_night": rng.uniform(-0.2, 1.2, 200),  # beyond the clip on both sides
            "purchase_total": rng.exponential(50, 200) - 5,  # negatives: log1p of the non-negative part
        }
    )
    spark_scaled = np.asarray(
        [
            r.features
            for r in spark.createDataFrame(frame)
            .select("user_id", scaler.transform().alias("features"))
            .orderBy("user_id")
            .collect()
        ],
        dtype=np.float32,
    )
    mine = pyfunc.scale(frame.sort_values("user_id"), asdict(scaler))
    assert mine.dtype == np.float32 and np.array_equal(mine, spark_scaled)
    # the clip bounds each scaled value; a netted one is two clipped values combined
    assert mine[:, :2].min() == -3.0 and mine[:, :2].max() == 3.0


def test_a_missing_feature_column_is_named():
    with pytest.raises(ValueError, match="lacks feature columns: purchase_total"):
        pyfunc.scale(pd.DataFrame({"n_events": [1.0], "share_night": [0.1]}), asdict(SCALER))


def test_the_model_gives_the_nearest_centres_stable_id_and_the_distance_to_its_centroid(tmp_path):
    manifest = {"segment_ids": [7, 3]}  # cluster 0 is segment 7, cluster 1 segment 3
    scaling = asdict(SCALER) | {"log1p": [False, False, False], "mean": [0.0] * 3, "std": [1.0] * 3}
    centres = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    centroids = {7: [0.1, 0.0, 0.0], 3: [2.0, 2.0, 1.0]}
    artifacts = pyfunc.export(tmp_path / "m", manifest, scaling, centres, centroids, None)
    model = pyfunc.SegmenterModel()
    model.load_context(SimpleNamespace(artifacts=artifacts))
    users = pd.DataFrame(
        {"n_events": [0.2, 1.9], "share_night": [0.0, 2.0], "purchase_total": [0.0, 2.0], "x": [1, 2]}
    )
    out = model.predict(None, users)
    assert out.segment_id.tolist() == [7, 3]
    assert out.distance.tolist() == pytest.approx([0.1, np.sqrt(0.01 + 1.0)], rel=1e-6)


def test_the_bisecting_tree_read_from_the_saved_model_assigns_as_mllib_does(spark, tmp_path):
    from pyspark.ml.clustering import BisectingKMeans
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(5)
    points = np.concatenate([rng.normal(loc=m, size=(150, 4)) for m in (0.0, 1.0, 2.5, -2.0, 5.0, 6.0)])
    frame = spark.createDataFrame([(i, Vectors.dense(p)) for i, p in enumerate(points)], ["i", "vector"])
    model = BisectingKMeans(k=6, seed=2, featuresCol="vector", predictionCol="cluster").fit(frame)
    model.write().save(str(tmp_path / "model"))

    tree = pyfunc.bisecting_tree(tmp_path / "model")
    assert sorted(n["index"] for n in tree if not n["children"]) == list(range(6))  # the leaves
    mllib = [r.cluster for r in model.transform(frame).orderBy("i").select("cluster").collect()]
    assert pyfunc.walk(points, tree).tolist() == mllib
    # the walk is not the nearest leaf centre: for some points of overlapping groups they differ
    leaves = np.asarray([n["centre"] for n in sorted(tree, key=lambda n: n["index"]) if not n["children"]])
    nearest = ((points[:, None, :] - leaves[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    assert (nearest != np.asarray(mllib)).any()
