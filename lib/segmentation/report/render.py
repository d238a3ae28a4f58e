"""The report page: one self-contained HTML file (Jinja2 template `templates/report.html.j2`, plots as
inline PNG, no script or CDN) from `ReportData`, aggregate rows and one bounded sample already on the
driver. No Spark here: `report/stage.py` gathers the rows."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from segmentation.report import figures
from segmentation.tables import CLUSTERING_EVALUATION_SCHEMA, columns

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
SECTIONS = ("summary", "k-choice", "map", "lifts", "movement", "drift", "data-quality")  # always shown
TRAITS = 3  # defining traits per segment card
LIFT_CLIP = 2.0  # |log2 lift| at which a heat cell is fully coloured (x4 or x1/4)


@dataclass
class ReportData:
    """What the page shows; every list holds aggregate rows as plain dicts (a row per stage, per
    evaluated partition, per segment, per assign run...), except `map_features`: a bounded sample."""

    run_id: str
    minimum: int  # privacy.min_segment_size: smaller segments are not shown
    model_run: str | None = None  # the cluster run that produced the segments shown
    stages: list[dict] = field(default_factory=list)  # this run's pipeline_runs rows
    ingest: dict | None = None  # the latest ingest's pipeline_runs row (any run)
    quarantine: list[dict] = field(default_factory=list)  # reason, records: all of events_quarantine
    evaluations: list[dict] = field(default_factory=list)  # clustering_evaluation of model_run
    evidence: list[dict] = field(default_factory=list)  # k_evidence of model_run
    profiles: list[dict] = field(default_factory=list)  # segment_profiles shown
    transitions: list[dict] = field(default_factory=list)  # segment_transitions of model_run
    drift: list[dict] = field(default_factory=list)  # per assign run (see report/stage.py)
    recommendations: list[dict] = field(default_factory=list)  # segment_recommendations
    recommendation_scores: list[dict] = field(default_factory=list)  # recommendation_evaluation
    map_segments: list[int] = field(default_factory=list)  # the sample's segment ids
    map_features: list[list[float]] = field(default_factory=list)  # its raw features, same order


def cell(value) -> str:
    """How a value reads in a table cell: floats to 4 significant digits, lists joined, None empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def feature_names(profiles: list[dict]) -> list[str]:
    return [c[len("mean_") :] for c in profiles[0] if c.startswith("mean_")] if profiles else []


def _log_lift(lift) -> float | None:
    return math.log2(lift) if lift is not None and lift > 0 else None


def traits(profile: dict, names: list[str], n: int = TRAITS) -> list[dict]:
    """The `n` features that set the segment apart: what it does more than all segmented users first
    (largest lift), then what it does less (smallest), each with its mean and lift."""
    lifted = [(_log_lift(profile.get(f"lift_{name}")), name) for name in names]
    lifted = [(value, name) for value, name in lifted if value is not None and value != 0]
    more = sorted((t for t in lifted if t[0] > 0), key=lambda t: (-t[0], t[1]))
    less = sorted((t for t in lifted if t[0] < 0), key=lambda t: (t[0], t[1]))
    return [
        {"feature": name, "mean": profile[f"mean_{name}"], "lift": profile[f"lift_{name}"]}
        for _, name in (more + less)[:n]
    ]


def heat(value: float | None, clip: float = LIFT_CLIP) -> str:
    """A CSS background for a signed magnitude: red above zero, blue below, white at zero, grey for
    None; never so dark that the cell's text stops being readable."""
    if value is None:
        return "background:#f7f7f7"
    t = max(-1.0, min(1.0, value / clip))
    fade = int(255 - 150 * abs(t) + 0.5)
    rgb = (255, fade, fade) if t > 0 else (fade, fade, 255)
    return "background:rgb({},{},{})".format(*rgb)


def lift_heatmap(profiles: list[dict]) -> dict:
    """Features as rows (most distinctive first), segments as columns; each cell the segment mean, its
    lift and a colour for log2 lift."""
    names = feature_names(profiles)

    def spread(name: str) -> float:
        return max((abs(_log_lift(p.get(f"lift_{name}")) or 0.0) for p in profiles), default=0.0)

    rows = []
    for name in sorted(names, key=lambda n: (-spread(n), n)):
        cells = []
        for p in profiles:
            lift = p.get(f"lift_{name}")
            text = cell(p[f"mean_{name}"]) + ("" if lift is None else f" ×{lift:.2f}")
            cells.append({"text": text, "style": heat(_log_lift(lift))})
        rows.append({"feature": name, "cells": cells})
    return {"segments": [f"{p['segment_id']}: {p['label']}" for p in profiles], "rows": rows}


def transition_matrix(transitions: list[dict]) -> dict | None:
    """Previous segments (rows; `new` for users the previous model did not segment) against current
    ones (columns; `left` for users this model no longer segments), users per cell, coloured by the
    share of the row; None when the model has no previous one."""
    if not transitions:
        return None
    previous_run = transitions[0].get("previous_run_id")
    order = sorted(
        {t["from_segment"] for t in transitions} | {t["to_segment"] for t in transitions}, key=_id_key
    )
    rows_ids = [s for s in order if any(t["from_segment"] == s for t in transitions)]
    cols_ids = [s for s in order if any(t["to_segment"] == s for t in transitions)]
    counts = {(t["from_segment"], t["to_segment"]): t["users"] for t in transitions}
    rows = []
    for a in rows_ids:
        total = sum(counts.get((a, b), 0) for b in cols_ids)
        cells = []
        for b in cols_ids:
            users = counts.get((a, b), 0)
            share = users / total if total else 0.0
            cells.append({"text": f"{users} ({share:.0%})" if users else "", "style": heat(share, 1.0)})
        rows.append({"segment": _name(a, "new"), "users": total, "cells": cells})
    moved = sum(
        t["users"]
        for t in transitions
        if t["from_segment"] is not None and t["to_segment"] != t["from_segment"]
    )
    stayed = sum(
        t["users"]
        for t in transitions
        if t["from_segment"] is not None and t["to_segment"] == t["from_segment"]
    )
    return {
        "previous_run": previous_run,
        "columns": [_name(b, "left") for b in cols_ids],
        "rows": rows,
        "stayed": stayed,
        "moved": moved,
        "first": previous_run is None,
    }


def _id_key(segment):
    return (segment is None, segment if segment is not None else 0)


def _name(segment, none: str) -> str:
    return none if segment is None else str(segment)


def quality(ingest: dict | None, quarantine: list[dict]) -> dict | None:
    """The latest ingest's accounting (read = kept + quarantined + duplicates) and its quarantine
    reasons, beside all quarantined records by reason."""
    if ingest is None and not quarantine:
        return None
    details = json.loads((ingest or {}).get("details") or "{}")
    return {
        "ingest": ingest,
        "bot_users": details.get("bot_users", 0),
        "reasons": sorted(details.get("quarantined_by_reason", {}).items()),
        "all_reasons": sorted(((q["reason"], q["records"]) for q in quarantine), key=lambda r: -r[1]),
    }


def recommendation_rows(scores: list[dict]) -> list[dict]:
    """Per segment (the overall row first), each method's hit rate and NDCG side by side."""
    rows: dict = {}
    for r in scores:
        row = rows.setdefault(
            r["segment_id"], {"segment_id": "all" if r["segment_id"] is None else r["segment_id"]}
        )
        row["users"] = r["users"]
        row[f"{r['method']} hit rate"] = r["hit_rate"]
        row[f"{r['method']} NDCG"] = r["ndcg"]
    return sorted(rows.values(), key=lambda r: (r["segment_id"] != "all", str(r["segment_id"])))


RECOMMENDATION_COLUMNS = [
    "segment_id",
    "users",
    "segment hit rate",
    "popularity hit rate",
    "segment NDCG",
    "popularity NDCG",
]
PROFILE_COLUMNS = [
    "segment_id",
    "label",
    "n_users",
    "share",
    "stability_jaccard",
    "dissolved",
    "top_categories",
]
DRIFT_COLUMNS = [
    "measured_at",
    "run_id",
    "model_version",
    "batch_rows",
    "feature_psi",
    "segment_share_psi",
    "drifted",
]


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("segmentation.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt field fails the render, not blanks the page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = cell
    return env


def render(data: ReportData) -> str:
    """The page for `data.run_id`: the sections of SECTIONS always (each says so when it has nothing
    to show yet), then rules, recommendations, the full evaluation and this run's stages."""
    profiles = sorted(data.profiles, key=lambda p: p["segment_id"])
    names = feature_names(profiles)
    selected = next((e for e in data.evaluations if e.get("selected")), None)
    segment_map = None
    if len(data.map_features) >= 3:
        points, explained = figures.project_2d(np.asarray(data.map_features))
        labels = {p["segment_id"]: p["label"] for p in profiles}
        segment_map = {
            "image": figures.segment_map(points, data.map_segments, labels, explained),
            "users": len(data.map_features),
        }
    ruled = [p for p in profiles if p.get("rules_fidelity") is not None]
    items = [r for r in data.recommendations if r["kind"] == "item" and r["rank"] <= 5]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            run_id=data.run_id,
            model_run=data.model_run,
            minimum=data.minimum,
            selected=selected,
            segmented_users=sum(p["n_users"] for p in profiles),
            cards=[
                p
                | {
                    "traits": traits(p, names),
                    "rule": p.get("rule"),
                    "rule_precision": p.get("rule_precision"),
                    "rule_recall": p.get("rule_recall"),
                }
                for p in profiles
            ],
            k_image=figures.k_choice(data.evaluations, data.evidence) if data.evaluations else None,
            evidence=data.evidence,
            evidence_columns=EVIDENCE_COLUMNS,
            segment_map=segment_map,
            heatmap=lift_heatmap(profiles) if profiles else None,
            transitions=transition_matrix(data.transitions),
            drift=sorted(data.drift, key=lambda r: r["measured_at"]),
            drift_columns=DRIFT_COLUMNS,
            drift_image=figures.drift_timeline(data.drift) if data.drift else None,
            quality=quality(data.ingest, data.quarantine),
            profiles=profiles,
            profile_columns=PROFILE_COLUMNS,
            ruled=ruled,
            rule_columns=["segment_id", "label", "rule", "rule_precision", "rule_recall"],
            recommendations=items,
            recommendation_scores=recommendation_rows(data.recommendation_scores),
            recommendation_cutoff=data.recommendation_scores[0] if data.recommendation_scores else None,
            recommendation_columns=RECOMMENDATION_COLUMNS,
            evaluations=data.evaluations,
            evaluation_columns=EVALUATION_COLUMNS,
            stages=data.stages,
            stage_columns=STAGE_COLUMNS,
        )
    )
