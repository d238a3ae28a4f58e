"""Segments as rules: MLlib's surrogate tree read back from its description, each segment's rule with
precision and recall, and the SQL CASE (the segment_rules_assign view) that reproduces the tree."""

from __future__ import annotations

import random
import re

import pytest

from segmentation import views
from segmentation.cluster import rules
from segmentation.cluster.rules import Branch, Leaf
from segmentation.errors import StageError

DEBUG = """DecisionTreeClassificationModel: uid=dtc_1, depth=2, numNodes=5, numClasses=3, numFeatures=2
  If (feature 0 <= 0.5)
   Predict: 0.0
  Else (feature 0 > 0.5)
   If (feature 1 <= 0.25000000000000006)
    Predict: 1.0
   Else (feature 1 > 0.25000000000000006)
    Predict: 2.0
"""


def test_the_tree_is_read_from_mllibs_description():
    tree = rules.parse_tree(DEBUG, ["share_night", "purchase_count"])
    assert tree == Branch(
        "share_night", 0.5, Leaf(0), Branch("purchase_count", 0.25000000000000006, Leaf(1), Leaf(2))
    )


@pytest.mark.parametrize(
    "text",
    [
        DEBUG.replace("Else (feature 0 > 0.5)", "Else (feature 1 > 0.5)"),  # an Else of another split
        DEBUG.replace("If (feature 0 <= 0.5)", "If (feature 0 in {0.0,1.0})"),  # a categorical split
        DEBUG + "   Predict: 1.0\n",  # lines after the tree
        "\n".join(DEBUG.splitlines()[:4]),  # ends early
    ],
)
def test_a_description_it_does_not_recognise_is_refused(text):
    with pytest.raises(StageError, match="surrogate tree"):
        rules.parse_tree(text, ["share_night", "purchase_count"])


def test_splits_whose_sides_predict_the_same_segment_are_pruned():
    tree = Branch(
        "a",
        1.0,
        Branch("b", 2.0, Leaf(0), Leaf(0)),
        Branch("c", 3.0, Leaf(1), Branch("d", 4.0, Leaf(1), Leaf(1))),
    )
    assert rules.prune(tree) == Branch("a", 1.0, Leaf(0), Leaf(1))
    kept = Branch("a", 1.0, Leaf(0), Leaf(1))
    assert rules.prune(kept) == kept


def test_each_segment_gets_the_paths_to_its_leaves_with_the_tightest_bounds():
    tree = Branch("a", 5.0, Branch("a", 3.0, Leaf(0), Leaf(1)), Branch("b", 0.123456, Leaf(1), Leaf(0)))
    predicates = rules.segment_predicates(tree, [10, 20])
    # a <= 5 and a <= 3 is a <= 3; segment 10 has two leaves, joined by or
    assert predicates[10][0] == "a <= 3 or a > 5 and b > 0.123"
    assert predicates[20][0] == "a <= 5 and a > 3 or a > 5 and b <= 0.123"
    assert predicates[10][1] == "(`a` <= 3.0) OR (`a` > 5.0 AND `b` > 0.123456)"
    assert rules.case_expression({20: predicates[20][1], 10: predicates[10][1]}) == (
        f"CASE WHEN {predicates[10][1]} THEN 10 WHEN {predicates[20][1]} THEN 20 END"
    )


def _planted(spark, n=3000, seed=7):
    """Three segments defined by thresholds: night owls (share_night > 0.6), and among the others
    buyers (purchase_count > 4) and browsers; a third feature is noise. 3% of labels flipped."""
    rng = random.Random(seed)
    users, features = [], []
    for i in range(n):
        night, purchases, noise = rng.random(), rng.uniform(0, 10), rng.gauss(0, 1)
        segment = 7 if night > 0.6 else 3 if purchases > 4 else 0
        if rng.random() < 0.03:
            segment = rng.choice([0, 3, 7])
        users.append((f"u{i}", segment))
        features.append((f"u{i}", night, purchases, noise, "2026-09-01"))
    assigned = spark.createDataFrame(users, "user_id string, segment_id int")
    frame = spark.createDataFrame(
        features, "user_id string, share_night double, purchase_count double, noise double, as_of string"
    )
    return assigned, frame


TERM = re.compile(r"(\w+) (<=|>) (\S+)")


def _terms(rule: str) -> set[tuple[str, str]]:
    return {(name, op) for name, op, _ in TERM.findall(rule)}


def _near(rule: str, value: float, tolerance: float) -> bool:
    return any(abs(float(threshold) - value) <= tolerance for _, _, threshold in TERM.findall(rule))


def test_planted_threshold_segments_come_back_as_their_rules(spark):
    assigned, features = _planted(spark)
    names = ["share_night", "purchase_count", "noise"]
    surrogate = rules.fit(assigned, features, names, max_depth=3, seed=1)
    by_id = {r.segment_id: r for r in surrogate.segments}
    assert set(by_id) == {0, 3, 7}
    assert surrogate.fidelity >= 0.95  # 3% of labels are noise by construction
    # MLlib splits at bin boundaries (maxBins 32): thresholds land near the planted 0.6 and 4
    assert _terms(by_id[7].rule) == {("share_night", ">")} and _near(by_id[7].rule, 0.6, 0.04)
    assert _terms(by_id[3].rule) == {("share_night", "<="), ("purchase_count", ">")}
    assert _near(by_id[3].rule, 0.6, 0.04) and _near(by_id[3].rule, 4.0, 0.4)
    assert all("noise" not in (r.rule or "") for r in surrogate.segments)
    for rule in surrogate.segments:
        assert rule.precision >= 0.9 and rule.recall >= 0.9

    rows = [{"segment_id": s, "rule": None, "rule_sql": None} for s in (0, 3, 7)]
    rules.annotate(rows, surrogate, assigned, features)
    # The exact thresholds in SQL reproduce the tree: the view agrees with the segments exactly as
    # often as the tree does.
    assert rows[0]["rules_sql_agreement"] == pytest.approx(surrogate.fidelity, abs=1e-12)
    assert {r["rules_fidelity"] for r in rows} == {surrogate.fidelity}

    features.createOrReplaceTempView("user_features")
    try:
        select = views.definitions(3, rules={r["segment_id"]: r["rule_sql"] for r in rows})[
            "segment_rules_assign"
        ]
        by_sql = spark.sql(select).join(assigned.withColumnRenamed("segment_id", "fitted"), "user_id")
        assert by_sql.where("segment_id = fitted").count() / by_sql.count() == pytest.approx(
            surrogate.fidelity
        )
    finally:
        spark.catalog.dropTempView("user_features")


def test_a_segment_left_out_of_the_published_rules_gets_null_in_the_view(spark):
    assigned, features = _planted(spark, n=600)
    surrogate = rules.fit(assigned, features, ["share_night", "purchase_count", "noise"], max_depth=2, seed=1)
    rows = [{"segment_id": s, "rule": None, "rule_sql": None} for s in (0, 3)]  # 7: merged at publishing
    rules.annotate(rows, surrogate, assigned, features)
    night = {r.segment_id: r for r in surrogate.segments}[7]
    assert rows[0]["rules_sql_agreement"] < surrogate.fidelity  # segment 7's users count as misses
    case = rules.case_expression({r["segment_id"]: r["rule_sql"] for r in rows})
    nulls = features.selectExpr(f"{case} AS s").where("s IS NULL").count()
    assert nulls > 0.8 * night.recall * assigned.where("segment_id = 7").count()
