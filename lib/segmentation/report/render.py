"""The report page: tables plus plots as inline PNG, from aggregate rows (a row per stage, per
evaluated partition, per segment) as plain dicts. No Spark here."""

from __future__ import annotations

import base64
import html
import io
import json

from segmentation.tables import CLUSTERING_EVALUATION_SCHEMA, columns


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


# The k_evidence column each k rule reads (cluster/kselect.py)
RULE_FIGURE = {
    "prediction_strength": "prediction_strength",
    "gap": "gap",
    "clusterboot": "jaccard_min",
    "silhouette": "silhouette",
}


def _plots(evaluations: list[dict], profiles: list[dict], evidence: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    if evidence:
        _k_evidence_plot(axes[0], evidence)
    else:
        _k_sweep_plot(axes[0], evaluations)
    shown = sorted(profiles, key=lambda p: p["segment_id"])
    axes[1].bar([str(p["segment_id"]) for p in shown], [p["n_users"] for p in shown], color="#4c72b0")
    axes[1].set_xlabel("segment")
    axes[1].set_ylabel("users")
    axes[1].set_title("Segment sizes")
    out = _png(fig)
    plt.close(fig)
    return out


def _k_evidence_plot(axis, evidence: list[dict]) -> None:
    """The figure of the rule that chose k, by k, per representation, the chosen k circled."""
    rule = evidence[0]["rule"]
    figure = RULE_FIGURE[rule]
    for rep, marker in zip(sorted({e["representation"] for e in evidence}), "os^Dv<>", strict=False):
        rows = sorted((e["k"], e[figure], e["chosen"]) for e in evidence if e["representation"] == rep)
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            continue
        line = axis.plot([r[0] for r in rows], [r[1] for r in rows], marker=marker, label=rep)[0]
        for k, value, chosen in rows:
            if chosen:
                axis.scatter(
                    [k], [value], s=220, facecolors="none", edgecolors=line.get_color(), linewidths=2
                )
    axis.set_xticks(sorted({e["k"] for e in evidence}))
    axis.set_xlabel("k (circled: chosen)")
    axis.set_ylabel(figure.replace("_", " "))
    axis.set_title(f"k chosen by {rule.replace('_', ' ')}")
    axis.legend(fontsize=8)


def _k_sweep_plot(axis, evaluations: list[dict]) -> None:
    """Under k_rule `metric`: every fitted partition's silhouette by k."""
    for (rep, algo), marker in zip(
        sorted({(e["representation"], e["algorithm"]) for e in evaluations}), "osd^v<>", strict=False
    ):
        points = sorted(
            (e["k"], e["silhouette"])
            for e in evaluations
            if e["representation"] == rep and e["algorithm"] == algo and e["silhouette"] is not None
        )
        if points:
            axis.plot(*zip(*points, strict=True), marker=marker, label=f"{rep} / {algo}")
    axis.set_xticks(sorted({e["k"] for e in evaluations}))
    axis.set_xlabel("k")
    axis.set_ylabel("silhouette")
    axis.set_title("Silhouette by k")
    axis.legend(fontsize=8)


def _rules(profiles: list[dict]) -> str:
    """Each segment's surrogate-tree rule with its precision and recall, the tree's fidelity and the
    agreement of the segment_rules_assign view (profiles of older runs have no rules: nothing)."""
    ruled = [p for p in profiles if p.get("rules_fidelity") is not None]
    if not ruled:
        return ""
    agreement = ruled[0].get("rules_sql_agreement")
    return (
        "<h3>Segments as rules</h3><p>A shallow decision tree fitted to predict each user's segment from "
        f"the features puts {ruled[0]['rules_fidelity']:.1%} of users in their own segment (fidelity). "
        "Precision: of the users a rule selects, the share in the segment; recall: of the segment's users, "
        "the share it selects. The view <code>segment_rules_assign</code> applies these rules in SQL"
        + (f" and reproduces {agreement:.1%} of users' segments." if agreement is not None else ".")
        + "</p>"
        + _table(ruled, ["segment_id", "label", "rule", "rule_precision", "rule_recall"])
    )


def _recommendations(lists: list[dict], scores: list[dict], shown: int = 5) -> str:
    """Each segment's first items (segment_recommendations) and the lists' hit rate and NDCG on the
    held-out days against global popularity (recommendation_evaluation); nothing without lists."""
    if not lists:
        return ""
    parts = ["<h2>Recommendations</h2>"]
    if scores:
        k, cutoff = scores[0]["k"], scores[0]["cutoff"]
        parts.append(
            f"<p>Lists built from purchases before {html.escape(str(cutoff))}, scored on what each user "
            f"bought after it that they had not bought before: hit rate (a user's first {k} "
            f"recommendations hold at least one of those) and NDCG@{k}, per segment, against the "
            "same number of the most popular items.</p>"
        )
        rows = {}
        for r in scores:
            row = rows.setdefault(
                r["segment_id"], {"segment_id": "all" if r["segment_id"] is None else r["segment_id"]}
            )
            row["users"] = r["users"]
            row[f"{r['method']} hit rate"] = r["hit_rate"]
            row[f"{r['method']} NDCG"] = r["ndcg"]
        ordered = sorted(rows.values(), key=lambda r: (r["segment_id"] != "all", str(r["segment_id"])))
        columns = [
            "segment_id",
            "users",
            "segment hit rate",
            "popularity hit rate",
            "segment NDCG",
            "popularity NDCG",
        ]
        parts.append(_table(ordered, columns))
    items = [r for r in lists if r["kind"] == "item" and r["rank"] <= shown]
    parts.append(f"<h3>First {shown} items per segment</h3>")
    parts.append(
        _table(
            sorted(items, key=lambda r: (r["segment_id"], r["rank"])),
            ["segment_id", "rank", "key", "buyers", "support", "lift"],
        )
    )
    return "".join(parts)


def _feature_table(profiles: list[dict]) -> str:
    """Features as rows, segments as columns: each cell is the segment mean and its lift."""
    if not profiles:
        return ""
    names = [c[len("mean_") :] for c in profiles[0] if c.startswith("mean_")]
    columns = ["feature"] + [f"{p['segment_id']}: {p['label']}" for p in profiles]
    rows = []
    for name in names:
        row = {"feature": name}
        for p, column in zip(profiles, columns[1:], strict=True):
            lift = p.get(f"lift_{name}")
            row[column] = f"{p[f'mean_{name}']:.3g}" + ("" if lift is None else f" (×{lift:.2f})")
        rows.append(row)
    return "<h3>Feature means (lift vs all segmented users)</h3>" + _table(rows, columns)


EVALUATION_COLUMNS = [c for c in columns(CLUSTERING_EVALUATION_SCHEMA) if c != "run_id"]
STAGE_COLUMNS = [
    "stage",
    "status",
    "started_at",
    "finished_at",
    "rows_in",
    "rows_out",
    "rows_quarantined",
    "rows_duplicate",
]


EVIDENCE_COLUMNS = [
    "representation",
    "k",
    "chosen",
    "prediction_strength",
    "gap",
    "gap_se",
    "jaccard_min",
    "jaccard_mean",
    "silhouette",
    "reason",
]


def render(
    run_id: str,
    stages: list[dict],
    evaluations: list[dict],
    profiles: list[dict],
    minimum: int,
    evidence: list[dict] | None = None,
    recommendations: list[dict] | None = None,
    recommendation_scores: list[dict] | None = None,
) -> str:
    """The page for `run_id`: its pipeline_runs rows, the clustering_evaluation and k_evidence rows of
    the clustering that produced the segments, the segment profiles shown (at least `minimum` users
    each), and the segments' recommendation lists with their offline evaluation."""
    evidence = evidence or []
    ingest = next((s for s in stages if s["stage"] == "ingest"), None)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Segmentation report {html.escape(run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f0f0f0}</style></head><body>",
        f"<h1>Segmentation report</h1><p>Run <code>{html.escape(run_id)}</code></p>",
    ]
    if ingest:
        details = json.loads(ingest["details"] or "{}")
        parts.append(
            "<h2>Data accounted for</h2>"
            f"<p>{ingest['rows_in']} records read = {ingest['rows_out']} kept + {ingest['rows_quarantined']} "
            f"quarantined + {ingest['rows_duplicate']} duplicates. Bot users flagged (not segmented): "
            f"{details.get('bot_users', 0)}.</p>"
            + _table(
                [
                    {"reason": k, "records": v}
                    for k, v in sorted(details.get("quarantined_by_reason", {}).items())
                ],
                ["reason", "records"],
            )
        )
    if stages:
        parts.append("<h2>Stages</h2>" + _table(stages, STAGE_COLUMNS))
    parts.append(
        "<h2>Clustering evaluation</h2><p>Every representation (the autoencoder's <code>embedding</code>, "
        "the scaled raw features <code>raw</code>, and where configured <code>idec</code> and "
        "<code>sequence</code>) is clustered with the same algorithms; the <code>_common</code> columns score "
        "every partition in one common space, the scaled raw features, so representations compare.</p>"
    )
    parts.append(_table(evaluations, EVALUATION_COLUMNS))
    if evidence:
        parts.append(
            f"<h3>Evidence for k</h3><p>k chosen by <code>{html.escape(evidence[0]['rule'])}</code> on a sample "
            f"of {evidence[0]['sample_rows']} users, from k-means refitted on halves (prediction strength), "
            "uniform references (gap) and bootstrap resamples (Jaccard: a segment recovered at >= 0.75 is "
            "stable, at <= 0.5 it dissolves).</p>"
        )
        parts.append(_table(evidence, EVIDENCE_COLUMNS))
    parts.append(_plots(evaluations, profiles, evidence))
    parts.append(
        f"<h2>Segment profiles</h2><p>Segments under {minimum} users (privacy.min_segment_size) are merged "
        "into segment -2 (other), which is itself withheld when still smaller; segment -1 holds users in no "
        "dense region (hdbscan). Labels name the features "
        "whose segment mean lies furthest from the population mean, in population standard deviations.</p>"
    )
    shown = sorted(profiles, key=lambda p: p["segment_id"])
    parts.append(
        _table(
            shown,
            ["segment_id", "label", "n_users", "share", "stability_jaccard", "dissolved", "top_categories"],
        )
    )
    parts.append(_rules(shown))
    parts.append(_recommendations(recommendations or [], recommendation_scores or []))
    parts.append(_feature_table(shown))
    parts.append("</body></html>")

    return "\n".join(parts)
