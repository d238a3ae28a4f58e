"""Drift statistics and their null-calibrated thresholds (pure: numpy only)."""

import numpy as np
import pytest

from segmentation.assign.drift import compare, js_distance, psi

P = np.array([0.1] * 10)


def test_psi_and_js_are_zero_for_identical_and_large_for_disjoint_histograms():
    a = np.array([50.0, 50, 0, 0])
    assert psi(a, a) == pytest.approx(0) and js_distance(a, a) == pytest.approx(0)
    b = np.array([0.0, 0, 50, 50])
    assert psi(a, b) > 5 and js_distance(a, b) == pytest.approx(1.0)


@pytest.mark.parametrize("batch_rows", [100, 20_000])
def test_unchanged_behaviour_raises_alarms_at_about_alpha_whatever_the_sample_size(batch_rows):
    """Many batches drawn from the reference itself: the family of 20 features alarms in at most
    ~alpha of them, at a small and at a large batch size (a fixed PSI cut would not)."""
    rng = np.random.default_rng(7)
    reference = [rng.multinomial(50_000, P).astype(float) for _ in range(20)]
    alarms, fixed = 0, 0
    replays = 60
    for replay in range(replays):
        batch = [rng.multinomial(batch_rows, P).astype(float) for _ in range(20)]
        rows = compare("feature", [f"f{i}" for i in range(20)], reference, batch, 0.05, 20, 4000, replay)
        alarms += any(r.drifted for r in rows)
        fixed += any(r.psi > 0.1 for r in rows)
    assert alarms / replays <= 0.12  # alpha = 0.05, with room for 60 replays' noise
    if batch_rows == 100:
        assert fixed / replays > 0.5  # PSI > 0.1 fires on most small unchanged samples


def test_a_planted_shift_is_detected_at_a_small_sample():
    rng = np.random.default_rng(3)
    reference = rng.multinomial(50_000, P).astype(float)
    shifted = rng.multinomial(300, np.r_[[0.05] * 5, [0.15] * 5]).astype(float)
    (row,) = compare("feature", ["x"], [reference], [shifted], 0.05, 20, 4000, 0)
    assert row.drifted and row.psi > row.threshold and 0 < row.js_distance < 1


def test_reference_round_trips_and_is_none_for_older_segmenters(tmp_path):
    from segmentation.assign.drift import Reference

    ref = Reference({"share_night": [0.1, 0.5]}, {"share_night": [3.0, 4.0, 5.0]})
    ref.save(tmp_path / "drift_reference.json")
    assert Reference.load(tmp_path / "drift_reference.json") == ref
    assert Reference.load(tmp_path / "absent.json") is None
