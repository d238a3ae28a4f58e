"""The report page from plain rows (pure: no SparkSession)."""

import json
import re

import numpy as np
import pytest
from jinja2 import UndefinedError

from segmentation.report.figures import project_2d
from segmentation.report.render import (
    EVALUATION_COLUMNS,
    SECTIONS,
    ReportData,
    heat,
    render,
    traits,
    transition_matrix,
)

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
        "run_id": "r",
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
        "run_id": "r",
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
        "mean_share_night": 0.5,
        "lift_n_events": 1.5,
        "lift_share_night": 0.25,
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
        "mean_share_night": 0.9,
        "lift_n_events": None,
        "lift_share_night": 1.8,
    },
]


def data(**fields) -> ReportData:
    base = {
        "run_id": "r",
        "minimum": 50,
        "stages": STAGES,
        "ingest": STAGES[0],
        "evaluations": [EVALUATION],
        "profiles": PROFILES,
    }
    return ReportData(**(base | fields))


def _section(page: str, name: str) -> str:
    return page.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]


def _cells(html: str, heading: str = "") -> list[str]:
    """The cells of the first table after `heading`."""
    table = (html.split(heading, 1)[1] if heading else html).split("</table>", 1)[0]
    return re.findall(r"<t[dh](?:\s[^>]*)?>(.*?)</t[dh]>", table)


def test_every_section_is_there_even_with_nothing_to_show():
    page = render(ReportData(run_id="r", minimum=50))
    for name in SECTIONS:
        assert f'<section id="{name}">' in page
    assert "No segment to show" in page and "No ingest recorded" in page and "<img" not in page
    assert page.lstrip().startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_the_page_accounts_for_every_record_and_names_each_reason():
    quarantine = [{"reason": "bad_time", "records": 3}, {"reason": "missing_user_id", "records": 9}]
    page = render(data(run_id="run<1>", quarantine=quarantine))
    quality = _section(page, "data-quality")
    assert "10 records read = 7 kept + 2 quarantined + 1 duplicates" in quality
    assert "Bot users flagged (not segmented): 1" in quality
    assert _cells(quality) == ["reason", "records", "missing_user_id", "2"]
    # all quarantined records, the most frequent reason first
    assert _cells(quality, "All quarantined")[2:] == ["missing_user_id", "9", "bad_time", "3"]
    assert "run&lt;1&gt;" in page and "run<1>" not in page  # the run id is escaped


def test_cards_show_size_share_stability_and_the_most_distinctive_traits():
    summary = _section(render(data()), "summary")
    assert (
        "100 users in 2 segments, found by <b>kmeans</b> on the <b>embedding</b> representation at k = 2"
        in summary
    )
    first, second = summary.split('<div class="card">')[1:]
    assert "0 · browsers" in first and "40.0%" in first and "unstable 0.42" in first
    assert "1 · buyers &amp; co" in second and "stability 0.91" in second
    # what the segment does more first (n_events x1.5), then less (share_night x0.25); a null lift is no trait
    assert second.index("n_events") < second.index("share_night") and "×0.25" in second
    assert "n_events" not in first


def test_traits_put_what_a_segment_does_more_before_what_it_does_less():
    lifts = {"a": 2.0, "b": 0.1, "c": 1.1, "d": 1.0, "e": 0.5, "f": None}
    profile = {f"mean_{n}": 1.0 for n in lifts} | {f"lift_{n}": v for n, v in lifts.items()}
    assert [t["feature"] for t in traits(profile, list(lifts), n=4)] == ["a", "c", "b", "e"]
    assert [t["feature"] for t in traits(profile, list(lifts), n=2)] == ["a", "c"]


def test_lift_heatmap_puts_the_most_distinctive_feature_first_and_colours_by_direction():
    lifts = _section(render(data()), "lifts")
    cells = _cells(lifts)
    assert cells[:3] == ["feature", "0: browsers", "1: buyers &amp; co"]
    assert cells[3:6] == ["share_night", "0.9 ×1.80", "0.5 ×0.25"]  # |log2 0.25| = 2 leads
    assert cells[6:9] == ["n_events", "2", "4 ×1.50"]
    assert (
        heat(2.0) == "background:rgb(255,105,105)"
        and heat(1.0) == "background:rgb(255,180,180)"
        and heat(-4.0) == "background:rgb(105,105,255)"
    )
    assert heat(None) == "background:#f7f7f7" and heat(0.0) == "background:rgb(255,255,255)"


def test_the_k_choice_is_plotted_from_the_evidence_of_its_rule():
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
    section = _section(render(data(evidence=evidence)), "k-choice")
    assert "k chosen by <code>prediction_strength</code> on a sample of 500 users" in section
    assert section.count('<img alt="k choice"') == 1
    cells = _cells(section, "Evidence by k")
    assert cells[:3] == ["representation", "k", "chosen"]
    assert cells.count("True") == 2 and "largest k with prediction strength &gt;= 0.8 (0.800)" in cells
    assert "selected: highest &lt;silhouette&gt;" in section


def test_the_map_projects_the_sample_and_is_left_out_without_one():
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(0, 1, (30, 4)), rng.normal(5, 1, (30, 4))])
    page = render(data(map_features=features.tolist(), map_segments=[0] * 30 + [1] * 30))
    assert "A sample of 60 users" in _section(page, "map") and '<img alt="segment map"' in page
    assert "No users to map" in _section(render(data()), "map")


def test_projection_finds_the_direction_that_separates_two_groups():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (50, 3))
    b = rng.normal(0, 1, (50, 3))
    b += 4  # the groups differ along the diagonal: the first component
    constant = np.ones((100, 1))  # dropped, not divided by zero
    points, explained = project_2d(np.hstack([np.vstack([a, b]), constant]))
    assert points.shape == (100, 2) and explained[0] > 0.6 > explained[1] > 0
    assert abs(points[:50, 0].mean() - points[50:, 0].mean()) > 2.5
    again, _ = project_2d(np.hstack([np.vstack([a, b]), constant]))
    assert np.allclose(points, again)


def test_movement_is_a_matrix_of_previous_against_current_segments():
    moves = [
        {"previous_run_id": "p", "from_segment": 0, "to_segment": 0, "users": 30},
        {"previous_run_id": "p", "from_segment": 0, "to_segment": 1, "users": 10},
        {"previous_run_id": "p", "from_segment": 1, "to_segment": 1, "users": 55},
        {"previous_run_id": "p", "from_segment": None, "to_segment": 1, "users": 5},
        {"previous_run_id": "p", "from_segment": 1, "to_segment": None, "users": 2},
    ]
    matrix = transition_matrix(moves)
    assert matrix["columns"] == ["0", "1", "left"] and [r["segment"] for r in matrix["rows"]] == [
        "0",
        "1",
        "new",
    ]
    assert [c["text"] for c in matrix["rows"][0]["cells"]] == ["30 (75%)", "10 (25%)", ""]
    assert matrix["stayed"] == 85 and matrix["moved"] == 12
    section = _section(render(data(transitions=moves)), "movement")
    assert "85 kept their segment, 12 moved or left" in section
    first = [{"previous_run_id": None, "from_segment": None, "to_segment": 0, "users": 40}]
    assert "This is the first model" in _section(render(data(transitions=first)), "movement")


def test_drift_over_time_plots_each_assign_run():
    runs = [
        {
            "run_id": f"a{i}",
            "measured_at": f"2026-06-0{i}",
            "batch_rows": 100,
            "feature_psi": 0.05 * i,
            "feature_threshold": 0.2,
            "segment_share_psi": 0.01,
            "segment_share_threshold": 0.2,
            "drifted": i == 5,
        }
        for i in (5, 1, 3)
    ]
    section = _section(render(data(drift=runs)), "drift")
    assert '<img alt="drift over time"' in section
    assert [c for c in _cells(section) if c.startswith("a")] == ["a1", "a3", "a5"]  # in time order
    assert "No <code>segment assign</code> run or refit" in _section(render(data()), "drift")


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
    page = render(data(profiles=profiles))
    section = _section(page, "rules")
    assert "puts 90.0% of users in their own segment" in section and "reproduces 85.0%" in section
    cells = _cells(section)
    # in segment order; a segment without a rule shows empty cells and recall 0
    assert cells[5:10] == ["0", "browsers", "", "", "0"]
    assert cells[10:] == ["1", "buyers &amp; co", "n_events &gt; 3 and share_night &lt;= 0.2", "0.8", "0.7"]
    assert '<div class="rule">n_events &gt; 3 and share_night &lt;= 0.2</div>' in _section(page, "summary")
    assert 'id="rules"' not in render(data())


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
        for s in (1, 0)
        for kind in ("item", "category")
        for r in range(7, 0, -1)
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
        for s in (0, None)
    ]
    section = _section(render(data(recommendations=lists, recommendation_scores=scores)), "recommendations")
    assert _cells(section)[6:12] == ["all", "10", "0.4", "0.2", "0.2", "0.1"]  # the overall row first
    items = _cells(section, "First 5 items per segment")
    assert [c for c in items if c.startswith(("i", "c"))] == [f"i{s}{r}" for s in (0, 1) for r in range(1, 6)]
    assert 'id="recommendations"' not in render(data())


def test_evaluation_and_this_runs_stages_are_tables_in_their_columns():
    section = _section(render(data()), "evaluation")
    evaluation = _cells(section)
    assert evaluation[: len(EVALUATION_COLUMNS)] == EVALUATION_COLUMNS
    assert "0.5123" in evaluation
    stages = _cells(section, "Stages of this run")
    assert stages[:3] == ["stage", "status", "started_at"] and "failed" in stages


@pytest.mark.parametrize("field", ["profiles", "evaluations"])
def test_a_misspelt_field_in_a_row_fails_loudly_not_blank(field):
    broken = [{"nothing": 1}]
    with pytest.raises((KeyError, UndefinedError)):
        render(data(**{field: broken}))
