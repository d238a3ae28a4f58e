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
        "mean_n_events": 4.0,
        "lift_n_events": 1.5,
    },
    {
        "segment_id": 0,
        "label": "browsers",
        "n_users": 40,
        "share": 0.4,
        "top_categories": ["c"],
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
    assert profiles[5:10] == ["0", "browsers", "40", "0.4", "c"]
    assert profiles[10:15] == ["1", "buyers &amp; co", "60", "0.6", "a, b"]
    means = _cells(page, "Feature means")
    assert means == ["feature", "0: browsers", "1: buyers &amp; co", "n_events", "2", "4 (×1.50)"]
    assert page.count('<img alt="plot"') == 1


def test_a_run_without_ingest_or_stages_still_renders():
    page = render("r", [], [EVALUATION], [], minimum=50)
    assert "Data accounted for" not in page and "<h2>Stages</h2>" not in page
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>")
