"""The report's plots, drawn with matplotlib into inline PNG (the page works offline: no script, no
CDN). Each takes aggregate rows or a bounded sample already on the driver. No Spark here."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

# The k_evidence column each k rule reads (cluster/kselect.py)
RULE_FIGURE = {
    "prediction_strength": "prediction_strength",
    "gap": "gap",
    "clusterboot": "jaccard_min",
    "silhouette": "silhouette",
}
MARKERS = "osD^v<>p*"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, alt: str) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def k_choice(evaluations: Sequence[dict], evidence: Sequence[dict]) -> str:
    """The figure that chose k, by k, per representation, the chosen k circled: the k rule's
    figure (k_evidence) or, under k_rule `metric`, each partition's silhouette with the selected one
    circled."""
    fig, axis = _pyplot().subplots(figsize=(6.5, 3.6))
    if evidence:
        rule = evidence[0]["rule"]
        figure = RULE_FIGURE[rule]
        series = {
            rep: [(e["k"], e[figure], e["chosen"]) for e in evidence if e["representation"] == rep]
            for rep in sorted({e["representation"] for e in evidence})
        }
        ylabel, title = figure.replace("_", " "), f"k chosen by {rule.replace('_', ' ')}"
    else:
        keys = sorted({(e["representation"], e["algorithm"]) for e in evaluations})
        series = {
            f"{rep} / {algo}": [
                (e["k"], e["silhouette"], bool(e["selected"]))
                for e in evaluations
                if (e["representation"], e["algorithm"]) == (rep, algo)
            ]
            for rep, algo in keys
        }
        ylabel, title = "silhouette", "k chosen by the selection metric"
    for (name, points), marker in zip(series.items(), MARKERS, strict=False):
        points = sorted(p for p in points if p[1] is not None)
        if not points:
            continue
        line = axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=name)[0]
        for k, value, chosen in points:
            if chosen:
                axis.scatter(
                    [k], [value], s=260, facecolors="none", edgecolors=line.get_color(), linewidths=2
                )
    ks = sorted({e["k"] for e in (evidence or evaluations)})
    axis.set_xticks(ks)
    axis.set_xlabel("k (circled: chosen)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    return _png(fig, "k choice")


def project_2d(matrix: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The first two principal components of `matrix` (rows: users, columns: raw features), each
    column standardized first (constant columns dropped), and the share of variance each explains."""
    matrix = np.asarray(matrix, dtype=np.float64)
    matrix = np.nan_to_num(matrix)
    sd = matrix.std(axis=0)
    kept = sd > 0
    if matrix.shape[0] < 3 or kept.sum() < 2:
        return np.zeros((matrix.shape[0], 2)), (0.0, 0.0)
    scaled = (matrix[:, kept] - matrix[:, kept].mean(axis=0)) / sd[kept]
    _, singular, vt = np.linalg.svd(scaled, full_matrices=False)
    variance = singular**2 / float((singular**2).sum())
    # a component's sign is arbitrary; fix it so reruns on the same sample draw the same picture
    signs = np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())
    signs[signs == 0] = 1.0
    return scaled @ (vt[:2].T * signs), (float(variance[0]), float(variance[1]))


def segment_map(points: np.ndarray, segments: Sequence[int], labels: dict[int, str], explained) -> str:
    """A scatter of the projected sample, one colour per segment, labelled by the segments' names."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7.5, 5.2))
    segments = np.asarray(segments)
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for i, segment in enumerate(sorted(set(segments.tolist()))):
        mine = segments == segment
        name = labels.get(segment, "other")
        axis.scatter(
            points[mine, 0],
            points[mine, 1],
            s=7,
            alpha=0.6,
            color=palette(i % palette.N),
            label=f"{segment}: {name[:40]}",
        )
    axis.set_xlabel(f"component 1 ({explained[0]:.0%} of variance)")
    axis.set_ylabel(f"component 2 ({explained[1]:.0%} of variance)")
    axis.set_title(f"{len(segments)} users, coloured by segment")
    axis.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig, "segment map")


def drift_timeline(runs: Sequence[dict]) -> str:
    """Per assign run, in time order: the largest feature PSI and the largest segment-share PSI,
    against their thresholds; runs that recommended retraining marked."""
    fig, axis = _pyplot().subplots(figsize=(7.5, 3.4))
    runs = sorted(runs, key=lambda r: r["measured_at"])
    x = list(range(len(runs)))
    for kind, marker, name in (
        ("feature", "o", "largest feature PSI"),
        ("segment_share", "s", "segment shares PSI"),
    ):
        values = [r.get(f"{kind}_psi") for r in runs]
        shown = [(i, v) for i, v in zip(x, values, strict=True) if v is not None]
        if shown:
            line = axis.plot(*zip(*shown, strict=True), marker=marker, label=name)[0]
            threshold = max((r.get(f"{kind}_threshold") or 0.0) for r in runs)
            if threshold:
                axis.axhline(threshold, color=line.get_color(), linestyle=":", linewidth=1)
    drifted = [i for i, r in zip(x, runs, strict=True) if r["drifted"]]
    for i in drifted:
        axis.axvspan(i - 0.4, i + 0.4, color="#d62728", alpha=0.12, linewidth=0)
    axis.set_xticks(x)
    axis.set_xticklabels([str(r["measured_at"])[:16] for r in runs], rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("PSI (dotted: threshold)")
    axis.set_title("Drift of scored users against the model's snapshot (shaded: retrain recommended)")
    axis.legend(fontsize=8)
    return _png(fig, "drift over time")
