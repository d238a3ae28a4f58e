"""The selection rule: floors on segment share and stability, the metric's direction, the fallback."""

from dataclasses import dataclass

import pytest

from segmentation.cluster.selection import select
from segmentation.config import ClusteringConfig


@dataclass
class Row:
    representation: str
    algorithm: str
    k: int
    min_segment_share: float
    stability_ari: float | None
    silhouette: float | None = None
    silhouette_common: float | None = None
    davies_bouldin_common: float | None = None


def rows() -> list[Row]:
    return [
        Row("embedding", "kmeans", 4, 0.20, 0.95, silhouette=0.50, davies_bouldin_common=0.9),
        Row("embedding", "kmeans", 5, 0.01, 0.97, silhouette=0.70, davies_bouldin_common=0.5),  # tiny segment
        Row("embedding", "kmeans", 6, 0.10, 0.40, silhouette=0.65, davies_bouldin_common=0.6),  # unstable
        Row("raw", "kmeans", 4, 0.20, 0.99, silhouette=0.90, davies_bouldin_common=0.7),
    ]


def test_highest_silhouette_among_candidates_meeting_both_floors():
    selection = select(
        rows(),
        ClusteringConfig(
            selection_metric="silhouette", candidates=["embedding"], min_segment_share=0.05, min_stability=0.6
        ),
    )
    assert selection.index == 0
    reasons = selection.reasons
    assert reasons[0].startswith("selected: highest silhouette (0.5000)")
    assert "smallest segment share 0.0100 < clustering.min_segment_share 0.05" in reasons[1]
    assert "stability_ari 0.4000 < clustering.min_stability 0.6" in reasons[2]
    assert "not in clustering.candidates" in reasons[3]


def test_floors_are_configurable():
    relaxed = ClusteringConfig(
        selection_metric="silhouette", candidates=["embedding"], min_segment_share=0.0, min_stability=0.0
    )
    assert select(rows(), relaxed).index == 1
    assert "loses to the selected 0.7000" in select(rows(), relaxed).reasons[0]


def test_lower_is_better_metric_across_representations():
    cfg = ClusteringConfig(
        selection_metric="davies_bouldin_common", candidates=["embedding", "raw"], min_segment_share=0.05
    )
    selection = select(rows(), cfg)
    assert selection.index == 3
    assert selection.reasons[3].startswith("selected: lowest davies_bouldin_common (0.7000)")


def test_baseline_selection_restricted_to_raw():
    assert select(rows(), ClusteringConfig(selection_metric="silhouette"), candidates=["raw"]).index == 3


def test_fallback_when_no_partition_meets_the_floors():
    cfg = ClusteringConfig(
        selection_metric="silhouette", candidates=["embedding"], min_segment_share=0.05, min_stability=0.99
    )
    selection = select(rows(), cfg)
    assert selection.index == 2  # best silhouette among those meeting the share floor
    assert "no partition met both" in selection.reasons[2]


def test_stability_off_skips_the_stability_floor():
    unscored = [Row("embedding", "kmeans", 4, 0.2, None, silhouette=0.3)]
    assert (
        select(unscored, ClusteringConfig(selection_metric="silhouette", min_stability=0.9))
        .reasons[0]
        .startswith("selected")
    )


def test_no_candidate_with_the_metric_is_an_error():
    from segmentation.errors import StageError

    with pytest.raises(StageError, match="no partition of \\['embedding'\\] has a silhouette_common"):
        select(
            [Row("raw", "kmeans", 4, 0.2, 0.9, silhouette_common=0.5)],
            ClusteringConfig(candidates=["embedding"]),
        )
