"""Which evaluated partition becomes the segmentation, and why each other one did not.

The rule (DESIGN.md §6, `clustering.*`): among the candidate representations, keep the partitions whose
smallest segment holds at least `min_segment_share` of the users and whose `stability_ari` reaches
`min_stability`; choose the best `selection_metric`. Every evaluated row gets a one-line reason, so a
data scientist can see why a partition with a better score lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from segmentation.config import ClusteringConfig
from segmentation.errors import StageError

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"davies_bouldin", "davies_bouldin_common"}


class Scored(Protocol):
    representation: str
    algorithm: str
    k: int
    min_segment_share: float
    stability_ari: float | None


@dataclass(frozen=True)
class Selection:
    index: int  # position of the chosen partition in the evaluated list
    reasons: list[str]  # one per evaluated partition, same order


def select(
    results: Sequence[Scored], cfg: ClusteringConfig, candidates: Sequence[str] | None = None
) -> Selection:
    """Apply the selection rule to `results` (restricted to the `candidates` representations, by default
    `cfg.candidates`). When no partition passes the share and stability floors, the best by the metric
    among those passing the share floor (else all) is taken, and its reason says so."""
    metric = cfg.selection_metric
    allowed = set(cfg.candidates if candidates is None else candidates)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

    def score(r: Scored) -> float | None:
        value = getattr(r, metric)
        return None if value is None else sign * value

    reasons: list[str] = [""] * len(results)
    scored = []
    passing = []
    for i, r in enumerate(results):
        if r.representation not in allowed:
            reasons[i] = f"not a candidate: representation {r.representation} is not in clustering.candidates"
            continue
        if score(r) is None:
            reasons[i] = f"not a candidate: {metric} could not be computed"
            continue
        scored.append(i)
        failed = _floor_failures(r, cfg)
        if failed:
            reasons[i] = "; ".join(failed)
        else:
            passing.append(i)
    if not scored:
        raise StageError(
            f"no partition of {sorted(allowed)} has a {metric}: check clustering.candidates and the logs"
        )
    pool, fallback = passing, ""
    if not pool:
        share_ok = [i for i in scored if results[i].min_segment_share >= cfg.min_segment_share]
        pool = share_ok or scored
        fallback = " (no partition met both clustering.min_segment_share and clustering.min_stability; " + (
            "best meeting the share floor)" if share_ok else "best of all candidates)"
        )
        log.warning("cluster selection%s", fallback)
    best = max(pool, key=lambda i: score(results[i]))
    best_value = getattr(results[best], metric)
    for i in scored:
        if i == best:
            continue
        if not reasons[i]:
            reasons[i] = f"{metric} {getattr(results[i], metric):.4f} loses to the selected {best_value:.4f}"
    direction = "lowest" if sign < 0 else "highest"
    reasons[best] = (
        f"selected: {direction} {metric} ({best_value:.4f}) among {len(pool)} of {len(scored)} candidates"
        f" with smallest segment share >= {cfg.min_segment_share} and stability_ari >= {cfg.min_stability}"
        + fallback
    )
    return Selection(index=best, reasons=reasons)


def _floor_failures(r: Scored, cfg: ClusteringConfig) -> list[str]:
    failed = []
    if r.min_segment_share < cfg.min_segment_share:
        failed.append(
            f"smallest segment share {r.min_segment_share:.4f} < clustering.min_segment_share "
            f"{cfg.min_segment_share}"
        )
    # With clustering.stability = off there is no stability figure and no stability floor.
    if r.stability_ari is not None and r.stability_ari < cfg.min_stability:
        failed.append(f"stability_ari {r.stability_ari:.4f} < clustering.min_stability {cfg.min_stability}")
    return failed
