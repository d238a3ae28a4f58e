"""Segments as rules a person can check: a shallow surrogate decision tree (MLlib) fitted to predict
each user's segment from the raw, interpretable features of `user_features`, read back as one rule
per segment ("share_night > 0.31 and purchase_count <= 2") with how well it describes the segment.

- Every segmented user trains the tree (MLlib's DecisionTreeClassifier runs in Spark; nothing is
  collected but the fitted tree and a segments x predictions count table).
- A segment's rule is the disjunction of the paths to the leaves that predict it; the leaves partition
  the feature space, so the rules never overlap. A segment no leaf predicts has no rule (recall 0).
- precision: of the users the rule selects, the share in the segment; recall: of the segment's users,
  the share the rule selects; fidelity: the share of all users the tree puts in their own segment.
- `rule` rounds thresholds to 3 significant digits for people; `rule_sql` keeps MLlib's exact
  thresholds, so `case_expression` over `user_features` (the `segment_rules_assign` view) reproduces
  the tree's assignment exactly; `sql_agreement` measures that expression, not the tree.

MLlib exposes a fitted tree to Python only as `toDebugString`; `parse_tree` reads that text (its
format has been stable since Spark 1.x) and refuses anything it does not recognise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.ml.classification import DecisionTreeClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leaf:
    prediction: int  # index into the segment ids the tree was fitted on


@dataclass(frozen=True)
class Branch:
    feature: str
    threshold: float  # users with feature <= threshold go left (MLlib's convention)
    left: Leaf | Branch
    right: Leaf | Branch


Tree = Leaf | Branch
Condition = tuple[str, str, float]  # (feature, "<=" or ">", threshold)


@dataclass(frozen=True)
class SegmentRule:
    segment_id: int
    rule: str | None  # thresholds to 3 significant digits; None where no leaf predicts the segment
    rule_sql: str | None  # the exact predicate over user_features' columns
    precision: float | None
    recall: float


@dataclass(frozen=True)
class Rules:
    tree: Tree
    segments: list[SegmentRule]
    fidelity: float


_IF = re.compile(r"^If \(feature (\d+) <= (\S+)\)$")
_ELSE = re.compile(r"^Else \(feature (\d+) > (\S+)\)$")
_PREDICT = re.compile(r"^Predict: (\S+)$")


def parse_tree(debug_string: str, names: Sequence[str]) -> Tree:
    """The tree of MLlib's `DecisionTreeClassificationModel.toDebugString`, features by name."""
    lines = [line.strip() for line in debug_string.splitlines()[1:] if line.strip()]
    position = 0

    def node() -> Tree:
        nonlocal position
        if position >= len(lines):
            raise StageError("surrogate tree: MLlib's tree description ended early")
        line = lines[position]
        position += 1
        if match := _PREDICT.match(line):
            return Leaf(int(float(match.group(1))))
        if not (match := _IF.match(line)):
            raise StageError(f"surrogate tree: unexpected line in MLlib's tree description: {line!r}")
        feature, threshold = int(match.group(1)), float(match.group(2))
        left = node()
        other = _ELSE.match(lines[position]) if position < len(lines) else None
        if not other or int(other.group(1)) != feature or float(other.group(2)) != threshold:
            raise StageError(f"surrogate tree: no matching Else for feature {feature} <= {threshold}")
        position += 1
        return Branch(names[feature], threshold, left, node())

    tree = node()
    if position != len(lines):
        raise StageError(f"surrogate tree: unread lines after the tree: {lines[position]!r}")
    return tree


def prune(tree: Tree) -> Tree:
    """The same partition with fewer conditions: a split whose two sides predict the same segment
    (MLlib keeps splits that purify a leaf without changing its majority) becomes that leaf."""
    if isinstance(tree, Leaf):
        return tree
    left, right = prune(tree.left), prune(tree.right)
    if isinstance(left, Leaf) and left == right:
        return left
    return Branch(tree.feature, tree.threshold, left, right)


def leaf_paths(tree: Tree, path: tuple[Condition, ...] = ()) -> list[tuple[tuple[Condition, ...], int]]:
    """Every leaf as (the conditions on the way to it, its prediction), left to right."""
    if isinstance(tree, Leaf):
        return [(path, tree.prediction)]
    return leaf_paths(tree.left, (*path, (tree.feature, "<=", tree.threshold))) + leaf_paths(
        tree.right, (*path, (tree.feature, ">", tree.threshold))
    )


def _tightest(path: Sequence[Condition]) -> list[Condition]:
    """A path's conditions with one bound per feature and side (the tightest), in first-use order."""
    bounds: dict[tuple[str, str], float] = {}
    for feature, op, threshold in path:
        key = (feature, op)
        if key not in bounds:
            bounds[key] = threshold
        else:
            bounds[key] = min(bounds[key], threshold) if op == "<=" else max(bounds[key], threshold)
    return [(feature, op, threshold) for (feature, op), threshold in bounds.items()]


def _readable(path: Sequence[Condition]) -> str:
    return (
        " and ".join(f"{feature} {op} {threshold:.3g}" for feature, op, threshold in _tightest(path))
        or "everyone"
    )


def _sql(path: Sequence[Condition]) -> str:
    terms = [f"`{feature}` {op} {threshold!r}" for feature, op, threshold in _tightest(path)]
    return "(" + " AND ".join(terms) + ")" if terms else "(TRUE)"


def segment_predicates(tree: Tree, segment_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """segment id -> (readable rule, SQL predicate), for every segment some leaf predicts; a segment
    with several leaves gets their paths joined by "or"."""
    paths: dict[int, list[tuple[Condition, ...]]] = {}
    for path, prediction in leaf_paths(tree):
        paths.setdefault(segment_ids[prediction], []).append(path)
    return {
        segment: (" or ".join(_readable(p) for p in ways), " OR ".join(_sql(p) for p in ways))
        for segment, ways in paths.items()
    }


def case_expression(predicates: dict[int, str]) -> str:
    """`CASE WHEN <predicate> THEN <segment> ... END` over user_features' columns (segment id ->
    SQL predicate); users whose leaf predicts a segment not listed get NULL."""
    if not predicates:
        return "CAST(NULL AS INT)"
    whens = " ".join(
        f"WHEN {predicate} THEN {int(segment)}" for segment, predicate in sorted(predicates.items())
    )
    return f"CASE {whens} END"


def fit(
    assigned: DataFrame, features: DataFrame, names: Sequence[str], max_depth: int, seed: int
) -> Rules | None:
    """Input: `assigned` (user_id, segment_id) and `features` (user_id + the raw feature columns
    `names`). Output: the surrogate tree and each segment's rule with its precision and recall, and the
    tree's fidelity; None when fewer than two segments have users."""
    segment_ids = sorted(r["segment_id"] for r in assigned.select("segment_id").distinct().collect())
    if len(segment_ids) < 2:
        return None
    index = F.create_map(*[x for i, s in enumerate(segment_ids) for x in (F.lit(s), F.lit(float(i)))])
    data = (
        assigned.select("user_id", "segment_id")
        .join(features.select("user_id", *[F.col(n).cast("double").alias(n) for n in names]), "user_id")
        .withColumn("label", index[F.col("segment_id")])
    )
    data = VectorAssembler(inputCols=list(names), outputCol="rule_features", handleInvalid="keep").transform(
        data
    )
    classifier = DecisionTreeClassifier(
        featuresCol="rule_features",
        labelCol="label",
        maxDepth=max_depth,
        seed=seed,
        predictionCol="leaf_class",
    )
    model = classifier.fit(data)
    tree = prune(parse_tree(model.toDebugString, names))
    # segments x predictions: at most k^2 counts
    counts = (
        model.transform(data)
        .groupBy("segment_id", F.col("leaf_class").cast("int").alias("predicted"))
        .count()
        .collect()
    )
    predicted_id = {i: s for i, s in enumerate(segment_ids)}
    total = sum(r["count"] for r in counts)
    in_segment = {s: sum(r["count"] for r in counts if r["segment_id"] == s) for s in segment_ids}
    selected = {s: sum(r["count"] for r in counts if predicted_id[r["predicted"]] == s) for s in segment_ids}
    hits = {
        s: sum(r["count"] for r in counts if r["segment_id"] == s and predicted_id[r["predicted"]] == s)
        for s in segment_ids
    }
    predicates = segment_predicates(tree, segment_ids)
    segments = [
        SegmentRule(
            segment_id=s,
            rule=predicates.get(s, (None, None))[0],
            rule_sql=predicates.get(s, (None, None))[1],
            precision=hits[s] / selected[s] if selected[s] else None,
            recall=hits[s] / in_segment[s] if in_segment[s] else 0.0,
        )
        for s in segment_ids
    ]
    fidelity = sum(hits.values()) / total if total else 0.0
    log.info(
        "cluster: surrogate tree of depth <= %d describes %.1f%% of users' segments",
        max_depth,
        100 * fidelity,
    )
    return Rules(tree=tree, segments=segments, fidelity=fidelity)


def sql_agreement(assigned: DataFrame, features: DataFrame, expression: str) -> float:
    """The share of `assigned` users (user_id, segment_id) whose segment `expression` (a CASE over
    user_features' columns, as the `segment_rules_assign` view computes it) reproduces."""
    row = (
        assigned.select("user_id", "segment_id")
        .join(features, "user_id")
        # a user the expression gives no segment (NULL) counts as a disagreement
        .select(
            F.avg(F.coalesce((F.expr(expression) == F.col("segment_id")).cast("double"), F.lit(0.0))).alias(
                "agreement"
            )
        )
        .first()
    )
    return float(row["agreement"] or 0.0)


def annotate(rows: list[dict], surrogate: Rules | None, assigned: DataFrame, features: DataFrame) -> None:
    """Fill the rule columns (profiles.RULE_COLUMNS) of `segment_profiles` rows in place: each
    segment's rule, precision and recall, the tree's fidelity, and how often the CASE expression the
    `segment_rules_assign` view will run (the published segments' predicates) reproduces the segment of
    `assigned`'s users (user_id, segment_id)."""
    if surrogate is None:
        return
    by_id = {rule.segment_id: rule for rule in surrogate.segments}
    for row in rows:
        rule = by_id.get(row["segment_id"])
        if rule is not None:
            row.update(
                rule=rule.rule, rule_sql=rule.rule_sql, rule_precision=rule.precision, rule_recall=rule.recall
            )
        row["rules_fidelity"] = surrogate.fidelity
    published = {row["segment_id"]: row["rule_sql"] for row in rows if row["rule_sql"]}
    agreement = sql_agreement(assigned, features, case_expression(published)) if published else None
    for row in rows:
        row["rules_sql_agreement"] = agreement
        if row["rule"]:
            log.info(
                "cluster: segment %3d rule (precision %.2f, recall %.2f): %s",
                row["segment_id"],
                row["rule_precision"] or 0.0,
                row["rule_recall"],
                row["rule"],
            )
    if agreement is not None:
        log.info(
            "cluster: the segment_rules_assign view reproduces %.1f%% of users' segments", 100 * agreement
        )
