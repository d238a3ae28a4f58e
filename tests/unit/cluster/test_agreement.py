"""ARI and NMI from distributed contingency counts, against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from segmentation.cluster.metrics import adjusted_rand, contingency, normalized_mutual_info


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_matches_scikit_learn(spark, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 400)
    noisy = np.where(rng.random(400) < 0.3, rng.integers(0, 5, 400), truth)
    pairs = spark.createDataFrame(
        [(f"s{t}", int(p)) for t, p in zip(truth, noisy, strict=True)], "segment string, segment_id int"
    )
    table = contingency(pairs, "segment", "segment_id")
    labels = [f"s{t}" for t in truth]
    assert adjusted_rand(table) == pytest.approx(adjusted_rand_score(labels, noisy), rel=1e-9)
    assert normalized_mutual_info(table) == pytest.approx(
        normalized_mutual_info_score(labels, noisy), rel=1e-9
    )


def test_identical_partitions_agree_perfectly():
    table = np.diag([5.0, 7.0, 3.0])
    assert adjusted_rand(table) == pytest.approx(1.0)
    assert normalized_mutual_info(table) == pytest.approx(1.0)
