"""How many segments: evidence for k from resampling a bounded sample of users.

Every rule here works on a driver sample of at most `clustering.selection_sample_rows` users (a uniform
sample; all users when there are fewer), because each refits k-means many times: prediction strength
(Tibshirani & Walther 2005) fits both halves of random splits, the gap statistic (Tibshirani, Walther &
Hastie 2001) fits reference data sets, and clusterboot (Hennig 2007) fits bootstrap resamples. The
sample (5,000 users by default) bounds the cost whatever the number of users: clusterboot for k 2..12
on one representation takes about half a minute on two cores. The segments themselves are then fitted
over every user with MLlib (cluster/fit.py). The resamples per k are few (4 halvings, 8 references, 8
bootstraps), so the figures carry noise of a few hundredths; `k_evidence` keeps them all.

Rules (`clustering.k_rule`), each choosing one k per representation from the figures of every k:

- `prediction_strength`: the largest k whose prediction strength (the worst segment's share of
  co-members that a model fitted on the other half also puts together) reaches `ps_threshold`.
- `gap`: the smallest k with gap(k) >= gap(k+1) - s(k+1) (the paper's one-standard-error rule), the
  reference data drawn uniformly in the box of the sample's principal axes.
- `clusterboot`: the largest k whose every segment keeps a mean bootstrap Jaccard of at least
  `jaccard_stable` (Hennig: >= 0.75 stable, <= 0.5 dissolved).
- `silhouette`: the k with the highest silhouette on the sample.

docs/quality.md holds the measurements that chose the default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segmentation.errors import ConfigError, StageError

log = logging.getLogger(__name__)

K_RULES = ("prediction_strength", "gap", "clusterboot", "silhouette")
JACCARD_STABLE = 0.75  # Hennig's clusterboot: a segment recovered at least this well is stable
JACCARD_DISSOLVED = 0.5  # ... and one recovered at most this well has dissolved


@dataclass(frozen=True)
class KEvidence:
    """The figures of one k on one sample (None where a rule was not computed)."""

    k: int
    inertia: float
    silhouette: float | None = None
    prediction_strength: float | None = None
    gap: float | None = None
    gap_se: float | None = None
    jaccard: tuple[float, ...] | None = None  # per segment of the sample fit, by its label
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)  # the sample fit's

    @property
    def jaccard_min(self) -> float | None:
        return None if self.jaccard is None else min(self.jaccard)

    @property
    def jaccard_mean(self) -> float | None:
        return None if self.jaccard is None else float(np.mean(self.jaccard))


@dataclass(frozen=True)
class KChoice:
    k: int
    reason: str
    evidence: list[KEvidence] = field(default_factory=list)


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 3, weights: np.ndarray | None = None):
    """A fitted scikit-learn k-means (greedy k-means++ starts, the best of `n_init`)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x, sample_weight=weights)


def prediction_strength(x: np.ndarray, k: int, seed: int, splits: int = 4) -> float:
    """Mean over `splits` random halvings of: for the test half clustered on its own, the smallest over
    its segments (of at least 2 members) of the share of member pairs that the training half's centres
    also put in one segment."""
    rng = np.random.default_rng(seed)
    values = []
    for split in range(splits):
        order = rng.permutation(len(x))
        train, test = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
        own = kmeans(test, k, seed + split).labels_
        predicted = kmeans(train, k, seed + split).predict(test)
        worst = 1.0
        for label in range(k):
            members = predicted[own == label]
            n = len(members)
            if n < 2:
                continue
            counts = np.bincount(members, minlength=k).astype(float)
            worst = min(worst, float((counts * (counts - 1)).sum() / (n * (n - 1))))
        values.append(worst)
    return float(np.mean(values))


def log_dispersion(x: np.ndarray, k: int, seed: int) -> float:
    return float(np.log(max(kmeans(x, k, seed).inertia_, 1e-12)))


def gap_statistic(x: np.ndarray, k: int, seed: int, references: int = 8) -> tuple[float, float]:
    """Gap(k) = mean log W_k of uniform references in the box of the sample's principal axes - log W_k of
    the sample, and its standard error s_k = sd * sqrt(1 + 1/B)."""
    rng = np.random.default_rng(seed)
    centred = x - x.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    rotated = centred @ axes.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    reference = [
        log_dispersion(rng.uniform(low, high, size=rotated.shape) @ axes, k, seed + b)
        for b in range(references)
    ]
    observed = log_dispersion(x, k, seed)
    return float(np.mean(reference) - observed), float(np.std(reference) * np.sqrt(1 + 1 / references))


def bootstrap_jaccard(x: np.ndarray, labels: np.ndarray, k: int, seed: int, boots: int = 8) -> np.ndarray:
    """Hennig's clusterboot: for each segment of `labels` (0..k-1), its mean over `boots` bootstrap
    resamples of the best Jaccard with a segment of k-means refitted on the resample, both restricted to
    the users drawn. A segment with no member drawn in a resample scores 0 there."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(k)
    for b in range(boots):
        drawn, counts = np.unique(rng.integers(0, len(x), len(x)), return_counts=True)
        refit = kmeans(x[drawn], k, seed + b, weights=counts.astype(float)).labels_
        original = labels[drawn]
        table = np.zeros((k, k))
        np.add.at(table, (original, refit), 1)
        union = table.sum(axis=1)[:, None] + table.sum(axis=0)[None, :] - table
        jaccard = np.where(union > 0, table / np.maximum(union, 1), 0.0)
        totals += jaccard.max(axis=1)
    return totals / boots


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int, rows: int = 4000) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return None
    return float(silhouette_score(x, labels, sample_size=min(rows, len(x)), random_state=seed))


def evidence(x: np.ndarray, ks: Sequence[int], rules: Sequence[str], seed: int) -> list[KEvidence]:
    """The figures every rule in `rules` needs, for each k in `ks`, on the sample `x` (rows x dim).
    The gap rule also needs k+1 for the largest k; it is computed and kept."""
    wanted = sorted(set(ks) | ({max(ks) + 1} if "gap" in rules else set()))
    out = []
    for k in wanted:
        if k >= len(x):
            break
        fitted = kmeans(x, k, seed, n_init=10)
        gap = gap_statistic(x, k, seed) if "gap" in rules else (None, None)
        out.append(
            KEvidence(
                k=k,
                inertia=float(fitted.inertia_),
                silhouette=silhouette(x, fitted.labels_, seed) if "silhouette" in rules else None,
                prediction_strength=(
                    prediction_strength(x, k, seed) if "prediction_strength" in rules else None
                ),
                gap=gap[0],
                gap_se=gap[1],
                jaccard=(
                    tuple(bootstrap_jaccard(x, fitted.labels_, k, seed).tolist())
                    if "clusterboot" in rules
                    else None
                ),
                labels=fitted.labels_,
            )
        )
        log.debug("k evidence: %s", out[-1])
    return out


def choose(
    figures: Sequence[KEvidence],
    rule: str,
    ks: Sequence[int],
    ps_threshold: float = 0.8,
    jaccard_stable: float = JACCARD_STABLE,
) -> KChoice:
    """The k `rule` picks among `ks` from `figures`, and a one-line reason. Where no k passes a
    threshold rule, the smallest k is taken and the reason says so."""
    by_k = {f.k: f for f in figures}
    allowed = [k for k in sorted(ks) if k in by_k]
    if not allowed:
        raise StageError(f"cluster: no k of {sorted(ks)} could be fitted on the sample: lower clustering.k")
    if rule == "silhouette":
        best = max(allowed, key=lambda k: by_k[k].silhouette or -1.0)
        return KChoice(best, f"highest sample silhouette ({by_k[best].silhouette:.3f})", list(figures))
    if rule == "gap":
        for k in allowed:
            after = by_k.get(k + 1)
            if after is None or by_k[k].gap >= after.gap - after.gap_se:
                return KChoice(
                    k, f"smallest k with gap(k) >= gap(k+1) - s(k+1) (gap {by_k[k].gap:.3f})", list(figures)
                )
        return KChoice(allowed[-1], "gap kept rising: the largest k", list(figures))
    if rule == "prediction_strength":
        passing = [k for k in allowed if by_k[k].prediction_strength >= ps_threshold]
        if passing:
            k = passing[-1]
            return KChoice(
                k,
                f"largest k with prediction strength >= {ps_threshold} ({by_k[k].prediction_strength:.3f})",
                list(figures),
            )
        return KChoice(
            allowed[0], f"no k reached prediction strength {ps_threshold}: the smallest", list(figures)
        )
    if rule == "clusterboot":
        passing = [k for k in allowed if by_k[k].jaccard_min >= jaccard_stable]
        if passing:
            k = passing[-1]
            return KChoice(
                k,
                f"largest k whose every segment has bootstrap Jaccard >= {jaccard_stable} "
                f"(worst {by_k[k].jaccard_min:.3f})",
                list(figures),
            )
        return KChoice(
            allowed[0], f"no k kept every segment at Jaccard {jaccard_stable}: the smallest", list(figures)
        )
    raise ConfigError(f"config key 'clustering.k_rule': unknown rule {rule!r} ({', '.join(K_RULES)})")
