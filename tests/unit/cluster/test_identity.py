"""Stable segment ids: matching a new fit's segments to the previous ones by member overlap."""

import numpy as np
import pytest

from segmentation.cluster.identity import MATCHED, NEW, NOISE, VANISHED, jaccard_matrix, match_segments


def _overlap(previous: np.ndarray, new: np.ndarray, previous_ids: list[int], new_clusters: list[int]):
    """The inputs of match_segments from two labelings of the same users."""
    table = np.array([[np.sum((previous == p) & (new == c)) for c in new_clusters] for p in previous_ids])
    sizes_p = np.array([np.sum(previous == p) for p in previous_ids])
    sizes_n = np.array([np.sum(new == c) for c in new_clusters])
    return table, sizes_p, sizes_n


def test_a_refit_that_numbers_the_same_segments_differently_keeps_every_id():
    rng = np.random.default_rng(0)
    previous = rng.choice([3, 7, 9], 600)  # ids from earlier retrains: not 0..k-1
    relabel = {3: 2, 7: 0, 9: 1}
    new = np.array([relabel[p] for p in previous])
    new[:12] = (new[:12] + 1) % 3  # a few users moved
    overlap, sp, sn = _overlap(previous, new, [3, 7, 9], [0, 1, 2])
    ids, lineage = match_segments(overlap, [3, 7, 9], sp, [0, 1, 2], sn, next_id=10, min_jaccard=0.5)
    assert ids == {2: 3, 0: 7, 1: 9}
    assert {m.status for m in lineage} == {MATCHED} and all(m.jaccard > 0.9 for m in lineage)


def test_a_new_behaviour_group_gets_one_new_id_and_the_rest_keep_theirs():
    previous = np.repeat([0, 1, 2], 200)
    new = previous.copy()
    new[150:200] = 3  # part of segment 0 now behaves differently: a fourth cluster
    overlap, sp, sn = _overlap(previous, new, [0, 1, 2], [0, 1, 2, 3])
    ids, lineage = match_segments(overlap, [0, 1, 2], sp, [0, 1, 2, 3], sn, next_id=3, min_jaccard=0.5)
    assert ids == {0: 0, 1: 1, 2: 2, 3: 3}
    assert [m.segment_id for m in lineage if m.status == NEW] == [3]
    assert not [m for m in lineage if m.status == VANISHED]


def test_a_dissolved_segment_is_recorded_and_its_id_never_reused():
    previous = np.repeat([0, 1, 2], 200)
    new = np.where(previous == 2, np.arange(600) % 2, previous)  # segment 2 split among 0 and 1
    overlap, sp, sn = _overlap(previous, new, [0, 1, 2], [0, 1])
    ids, lineage = match_segments(overlap, [0, 1, 2], sp, [0, 1], sn, next_id=3, min_jaccard=0.5)
    assert ids == {0: 0, 1: 1}
    (gone,) = [m for m in lineage if m.status == VANISHED]
    assert (gone.previous_segment_id, gone.segment_id, gone.previous_users) == (2, None, 200)


def test_too_little_overlap_is_a_new_segment_not_a_continuation():
    previous = np.repeat([0, 1], 100)
    new = np.where(np.arange(200) % 3 == 0, 0, 1)  # unrelated to the previous split
    overlap, sp, sn = _overlap(previous, new, [0, 1], [0, 1])
    ids, lineage = match_segments(overlap, [0, 1], sp, [0, 1], sn, next_id=5, min_jaccard=0.6)
    assert sorted(ids.values()) == [5, 6]
    assert sorted(m.status for m in lineage) == [NEW, NEW, VANISHED, VANISHED]


def test_noise_is_never_a_segment():
    previous = np.repeat([NOISE, 0, 1], 100)
    new = np.repeat([NOISE, 1, 0], 100)
    overlap, sp, sn = _overlap(previous, new, [NOISE, 0, 1], [NOISE, 0, 1])
    ids, lineage = match_segments(overlap, [NOISE, 0, 1], sp, [NOISE, 0, 1], sn, next_id=2, min_jaccard=0.5)
    assert ids == {NOISE: NOISE, 1: 0, 0: 1}
    assert all(NOISE not in (m.segment_id, m.previous_segment_id) for m in lineage)


def test_first_fit_numbers_clusters_from_zero():
    sizes = np.array([5, 7, 9])
    ids, lineage = match_segments(
        np.zeros((0, 3)), [], np.zeros(0), [0, 1, 2], sizes, next_id=0, min_jaccard=0.5
    )
    assert ids == {0: 0, 1: 1, 2: 2} and [m.status for m in lineage] == [NEW] * 3


def test_jaccard_of_disjoint_and_identical_sets():
    overlap = np.array([[10, 0], [0, 0]])
    j = jaccard_matrix(overlap, np.array([10, 0]), np.array([10, 0]))
    assert j[0, 0] == pytest.approx(1.0) and j[0, 1] == 0 and j[1, 1] == 0
