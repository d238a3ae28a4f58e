"""The report page from plain rows (pure: no SparkSession)."""

import json
import re

from segmentation.report.render import EVALUATION_COLUMNS, render

STAGES = [
    {
        "stage": "ingest",
        "status": "success",
        "started_at": "t0",
        "finished_at": "t1",
        "rows_in": 10,
        "rows_out": 7,
        "rows_quarantined": 2,
        "rows_duplicate": 1,
        "details": json.dumps({"quarantined_by_reason": {"missing_user_id": 2}, "bot_users": 1}),
    },
    {
        "stage": "cluster",
        "status": "failed",
        "started_at": "t1",
        "finished_at": "t2",
        "rows_in": 7,
        "rows_out": 0,
        "rows_quarantined": 0,
        "rows_duplicate": 0,
        "details": "{}",
    },
]
EVALUATION = {c: None for c in EVALUATION_COLUMNS} | {
    "representation": "embedding",
    "algorithm": "kmeans",
    "k": 2,
    "silhouette": 0.51234,
    "selected": True,
    "selection_reason": "selected: highest <silhouette>",
}
PROFILES = [
    {
        "segment_id": 1,
        "label": "buyers & co",
        "n_users": 60,
        "share": 0.6,
        "top_categories": ["a", "b"],
        "stability_jaccard": 0.91,
        "dissolved": False,
        "mean_n_events": 4.0,
        "lift_n_events": 1.5,
    },
    {
        "segment_id": 0,
        "label": "browsers",
        "n_users": 40,
        "share": 0.4,
        "top_categories": ["c"],
        "stability_jaccard": 0.42,
        "dissolved": True,
        "mean_n_events": 2.0,
        "lift_n_events": None,
    },
]


def _cells(page: str, heading: str) -> list[str]:
    """The cells of the first table after `heading`."""
    table = page.split(heading, 1)[1].split("</table>", 1)[0]
    return re.findall(r"<t[dh]>(.*?)</t[dh]>", table)


def test_the_page_accounts_for_every_record_and_names_each_reason():
    page = render("run<1>", STAGES, [EVALUATION], PROFILES, minimum=50)
    assert "10 records read = 7 kept + 2 quarantined + 1 duplicates" in page
    assert "Bot users flagged (not segmented): 1" in page
    assert _cells(page, "Data accounted for") == ["reason", "records", "missing_user_id", "2"]
    assert "run&lt;1&gt;" in page and "run<1>" not in page  # the run id is escaped


def test_stages_and_evaluations_are_tables_in_their_columns():
    page = render("r", STAGES, [EVALUATION], PROFILES, minimum=50)
    stages = _cells(page, "<h2>Stages</h2>")
    assert stages[:3] == ["stage", "status", "started_at"] and "failed" in stages
    evaluation = _cells(page, "<h2>Clustering evaluation</h2>")
    assert evaluation[: len(EVALUATION_COLUMNS)] == EVALUATION_COLUMNS
    assert "0.5123" in evaluation and "selected: highest &lt;silhouette&gt;" in evaluation


def test_segments_are_ordered_with_their_feature_means_and_lifts():
    page = render("r", STAGES, [EVALUATION], PROFILES, minimum=50)
    profiles = _cells(page, "<h2>Segment profiles</h2>")
    assert profiles[7:14] == ["0", "browsers", "40", "0.4", "0.42", "True", "c"]
    assert profiles[14:21] == ["1", "buyers &amp; co", "60", "0.6", "0.91", "False", "a, b"]
    means = _cells(page, "Feature means")
    assert means == ["feature", "0: browsers", "1: buyers &amp; co", "n_events", "2", "4 (×1.50)"]
    assert page.count('<img alt="plot"') == 1


def test_the_evidence_for_k_is_a_table_and_the_plot_of_its_rule():
    evidence = [
        {
            "representation": rep,
            "k": k,
            "sample_rows": 500,
            "prediction_strength": 1.0 - 0.1 * k,
            "gap": None,
            "gap_se": None,
            "jaccard_min": 0.9,
            "jaccard_mean": 0.95,
            "silhouette": None,
            "chosen": k == 2,
            "rule": "prediction_strength",
            "reason": "largest k with prediction strength >= 0.8 (0.800)" if k == 2 else None,
        }
        for rep in ("embedding", "raw")
        for k in (2, 3, 4)
    ]
    page = render("r", STAGES, [EVALUATION], PROFILES, minimum=50, evidence=evidence)
    assert "k chosen by <code>prediction_strength</code> on a sample of 500 users" in page
    cells = _cells(page, "Evidence for k")
    assert cells[:3] == ["representation", "k", "chosen"]
    assert cells.count("True") == 2 and "largest k with prediction strength &gt;= 0.8 (0.800)" in cells
    assert page.count('<img alt="plot"') == 1


def test_a_run_without_ingest_or_stages_still_renders():
    page = render("r", [], [EVALUATION], [], minimum=50)
    assert "Data accounted for" not in page and "<h2>Stages</h2>" not in page
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>")


def test_rules_are_listed_with_precision_recall_fidelity_and_the_views_agreement():
    rules = {"rules_fidelity": 0.9, "rules_sql_agreement": 0.85}
    profiles = [
        PROFILES[0]
        | rules
        | {"rule": "n_events > 3 and share_night <= 0.2", "rule_precision": 0.8, "rule_recall": 0.7},
        PROFILES[1]
        | rules
        | {"rule": None, "rule_precision": None, "rule_recall": 0.0},  # no leaf predicts it
    ]
    page = render("r", STAGES, [EVALUATION], profiles, minimum=50)
    assert "puts 90.0% of users in their own segment" in page and "reproduces 85.0%" in page
    cells = _cells(page, "<h3>Segments as rules</h3>")
    # in segment order; a segment without a rule shows empty cells and recall 0
    assert cells[5:10] == ["0", "browsers", "", "", "0"]
    assert cells[10:] == ["1", "buyers &amp; co", "n_events &gt; 3 and share_night &lt;= 0.2", "0.8", "0.7"]


def test_profiles_without_rules_show_no_rules_section():
    assert "Segments as rules" not in render("r", STAGES, [EVALUATION], PROFILES, minimum=50)


def test_recommendations_show_each_segments_first_items_and_the_offline_scores():
    lists = [
        {
            "segment_id": s,
            "kind": kind,
            "rank": r,
            "key": f"{kind[0]}{s}{r}",
            "buyers": 9,
            "support": 0.3,
            "lift": 2.0,
        }
        for s in (0, 1)
        for kind in ("item", "category")
        for r in range(1, 8)
    ]
    scores = [
        {
            "method": m,
            "segment_id": s,
            "users": 10,
            "hit_rate": h,
            "ndcg": h / 2,
            "k": 10,
            "cutoff": "2026-06-01",
        }
        for m, h in (("segment", 0.4), ("popularity", 0.2))
        for s in (None, 0)
    ]
    page = render(
        "r", STAGES, [EVALUATION], PROFILES, minimum=50, recommendations=lists, recommendation_scores=scores
    )
    cells = _cells(page, "<h2>Recommendations</h2>")
    assert cells[6:12] == ["all", "10", "0.4", "0.2", "0.2", "0.1"]  # the overall row first
    items = _cells(page, "First 5 items per segment")
    assert [c for c in items if c.startswith(("i", "c"))] == [f"i{s}{r}" for s in (0, 1) for r in range(1, 6)]
    assert "Recommendations" not in render("r", STAGES, [EVALUATION], PROFILES, minimum=50)
