"""The evidence for k (cluster/kselect.py) on data whose number of groups is known."""

import numpy as np
import pytest

from segmentation.cluster import kselect
from segmentation.errors import ConfigError

KS = [2, 3, 4, 5, 6]


def blobs(k: int, n: int = 600, dim: int = 6, spread: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (k, dim))
    return centres[rng.integers(0, k, n)] + rng.normal(0, 1, (n, dim))


@pytest.fixture(scope="module")
def four_groups():
    return kselect.evidence(blobs(4), KS, kselect.K_RULES, seed=3)


@pytest.mark.parametrize("rule", kselect.K_RULES)
def test_every_rule_finds_four_separated_groups(four_groups, rule):
    assert kselect.choose(four_groups, rule, KS).k == 4


def test_prediction_strength_falls_past_the_true_k(four_groups):
    strength = {f.k: f.prediction_strength for f in four_groups}
    assert strength[4] > 0.9
    assert strength[6] < strength[4]


def test_gap_needs_and_keeps_one_k_beyond_the_range(four_groups):
    assert [f.k for f in four_groups] == [*KS, 7]
    assert kselect.choose(four_groups, "gap", KS).k in KS


def test_bootstrap_jaccard_separates_real_groups_from_cuts_of_noise():
    x = blobs(3, seed=5)
    labels = kselect.kmeans(x, 3, seed=1).labels_
    assert kselect.bootstrap_jaccard(x, labels, 3, seed=2).min() >= kselect.JACCARD_STABLE
    noise = np.random.default_rng(7).normal(size=(600, 6))
    cuts = kselect.kmeans(noise, 6, seed=1).labels_
    assert kselect.bootstrap_jaccard(noise, cuts, 6, seed=2).min() < kselect.JACCARD_STABLE


def test_threshold_rules_fall_back_to_the_smallest_k_and_say_so():
    noise = np.random.default_rng(9).normal(size=(400, 5))
    figures = kselect.evidence(noise, [3, 4, 5], ["prediction_strength"], seed=1)
    choice = kselect.choose(figures, "prediction_strength", [3, 4, 5], ps_threshold=0.99)
    assert choice.k == 3
    assert "no k reached" in choice.reason


def test_an_unknown_rule_is_a_config_error(four_groups):
    with pytest.raises(ConfigError, match="clustering.k_rule"):
        kselect.choose(four_groups, "elbow", KS)
