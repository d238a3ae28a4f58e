"""Stage `report`: one self-contained HTML page about a run (tables plus plots as inline PNG).

Everything it shows is an aggregate (a row per stage, per evaluated partition, per segment), so the
driver only ever holds small tables. Segments smaller than `privacy.min_segment_size` are suppressed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.config import Config
from segmentation.runs import StageResult
from segmentation.storage import open_store
from segmentation.storage.names import CLUSTERING_EVALUATION, PIPELINE_RUNS, SEGMENT_PROFILES

log = logging.getLogger(__name__)


def report_path(cfg: Config, run_id: str) -> Path:
    return Path(cfg.report.path) / f"report-{run_id}.html"


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


def _plots(evaluations: list[dict], profiles: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for (rep, algo), marker in zip(
        sorted({(e["representation"], e["algorithm"]) for e in evaluations}), "osd^v<>", strict=False
    ):
        points = sorted(
            (e["k"], e["silhouette"])
            for e in evaluations
            if e["representation"] == rep and e["algorithm"] == algo and e["silhouette"] is not None
        )
        if points:
            axes[0].plot(*zip(*points, strict=True), marker=marker, label=f"{rep} / {algo}")
    axes[0].set_xticks(sorted({e["k"] for e in evaluations}))
    axes[0].set_xlabel("k")
    axes[0].set_ylabel("silhouette")
    axes[0].set_title("Silhouette by k")
    axes[0].legend(fontsize=8)
    shown = sorted(profiles, key=lambda p: p["segment_id"])
    axes[1].bar([str(p["segment_id"]) for p in shown], [p["n_users"] for p in shown], color="#4c72b0")
    axes[1].set_xlabel("segment")
    axes[1].set_ylabel("users")
    axes[1].set_title("Segment sizes")
    out = _png(fig)
    plt.close(fig)
    return out


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


def run(spark: SparkSession, cfg: Config, run_id: str) -> StageResult:
    store = open_store(spark, cfg.storage)
    profiles_all = [r.asDict() for r in store.read_or_fail(SEGMENT_PROFILES, "report").collect()]  # k rows
    # The evaluation of the clustering run that produced the current segments.
    cluster_run = profiles_all[0]["run_id"] if profiles_all else run_id
    evaluations = [
        r.asDict()
        for r in store.read_or_fail(CLUSTERING_EVALUATION, "report")
        .where(F.col("run_id") == cluster_run)
        .orderBy("representation", "algorithm", "k")
        .collect()
    ]
    minimum = cfg.privacy.min_segment_size
    # The cluster stage already merged small segments; this guards tables written by older versions.
    profiles = [p for p in profiles_all if p["n_users"] >= minimum]
    suppressed = len(profiles_all) - len(profiles)
    stages = []
    if store.exists(PIPELINE_RUNS):
        stages = [
            r.asDict()
            for r in store.read(PIPELINE_RUNS)
            .where(F.col("run_id") == run_id)
            .orderBy("started_at")
            .collect()
        ]
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
        parts.append(
            "<h2>Stages</h2>"
            + _table(
                stages,
                [
                    "stage",
                    "status",
                    "started_at",
                    "finished_at",
                    "rows_in",
                    "rows_out",
                    "rows_quarantined",
                    "rows_duplicate",
                ],
            )
        )
    parts.append(
        "<h2>Clustering evaluation</h2><p>The embedding is compared with the same algorithms on the "
        "scaled raw features (representation <code>raw</code>); the <code>_common</code> columns score every "
        "partition in that one common space, so representations compare fairly.</p>"
    )
    parts.append(
        _table(
            evaluations,
            [
                "representation",
                "algorithm",
                "k",
                "silhouette",
                "calinski_harabasz",
                "davies_bouldin",
                "wssse",
                "min_segment_share",
                "stability_ari",
                "silhouette_common",
                "calinski_harabasz_common",
                "davies_bouldin_common",
                "selected",
                "selection_reason",
            ],
        )
    )
    parts.append(_plots(evaluations, profiles))
    parts.append(
        f"<h2>Segment profiles</h2><p>Segments under {minimum} users (privacy.min_segment_size) are merged "
        "into segment -1 (other), which is itself withheld when still smaller. Labels name the features "
        "whose segment mean lies furthest from the population mean, in population standard deviations.</p>"
    )
    shown = sorted(profiles, key=lambda p: p["segment_id"])
    parts.append(_table(shown, ["segment_id", "label", "n_users", "share", "top_categories"]))
    parts.append(_feature_table(shown))
    parts.append("</body></html>")

    path = report_path(cfg, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    log.info("report: %s", path.resolve())
    return StageResult(
        rows_in=len(evaluations),
        rows_out=1,
        details={"path": str(path.resolve()), "segments_suppressed": suppressed},
    )
