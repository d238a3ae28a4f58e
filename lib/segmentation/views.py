"""The product's SQL views (names in tables.py): registered over the tables' views for `segment sql`,
and, where the tables live in a catalog (Unity Catalog), created in their schema by every fit.

- `segments_current`: each user's current segment (user_segments, fit and assign rows alike) with its
  label, model and when it was assigned; users of segments with fewer than
  `privacy.min_segment_size` users are left out.
- `segment_summary`: each segment of the current model: users now and share, label, users at the
  fit, bootstrap stability and whether it dissolved; small segments left out likewise.
- `segment_rules_assign`: every user of user_features with the segment the current model's surrogate
  rules give it (`segment_profiles.rule_sql`, cluster/rules.py): a plain CASE over the features, so
  a team with SQL alone can assign users; NULL where the rules point at no published segment.
- `user_recommendations`: each current user's segment's recommended items (segment_recommendations,
  recommend/, made for the model that put the user there), less the items the user already bought,
  with their rank in the segment's list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from segmentation.cluster.rules import case_expression
from segmentation.storage import TableStore
from segmentation.tables import (
    EVENTS_SILVER,
    SEGMENT_PROFILES,
    SEGMENT_RECOMMENDATIONS,
    SEGMENT_RULES_ASSIGN,
    SEGMENT_SUMMARY,
    SEGMENTS_CURRENT,
    USER_FEATURES,
    USER_RECOMMENDATIONS,
    USER_SEGMENTS,
)

log = logging.getLogger(__name__)

NEEDS = (USER_SEGMENTS, SEGMENT_PROFILES)


def definitions(
    min_segment_size: int,
    table: Callable[[str], str] = str,
    rules: dict[int, str] | None = None,
    bought: Sequence[str] | None = None,
) -> dict[str, str]:
    """Each view's SELECT, reading each table by `table(name)` (default: its plain name);
    segment_rules_assign only with `rules` (segment id -> SQL predicate, from `published_rules`),
    user_recommendations only with `bought` (the event types that count as buying an item)."""
    segments, profiles = table(USER_SEGMENTS), table(SEGMENT_PROFILES)
    sizes = f"SELECT segment_id, count(*) AS users FROM {segments} GROUP BY segment_id"
    selects = {
        SEGMENTS_CURRENT: (
            f"SELECT s.user_id, s.segment_id, p.label, s.model_version, s.assigned_by, s.assigned_at "
            f"FROM {segments} s JOIN ({sizes}) z ON z.segment_id = s.segment_id "
            f"LEFT JOIN {profiles} p ON p.segment_id = s.segment_id "
            f"WHERE z.users >= {int(min_segment_size)}"
        ),
        SEGMENT_SUMMARY: (
            f"SELECT z.segment_id, p.label, z.users, z.users / t.n AS share, p.n_users AS fitted_users, "
            f"p.stability_jaccard, p.dissolved, p.run_id AS model_version "
            f"FROM ({sizes}) z CROSS JOIN (SELECT count(*) AS n FROM {segments}) t "
            f"LEFT JOIN {profiles} p ON p.segment_id = z.segment_id "
            f"WHERE z.users >= {int(min_segment_size)}"
        ),
    }
    if rules:
        selects[SEGMENT_RULES_ASSIGN] = (
            f"SELECT user_id, {case_expression(rules)} AS segment_id, as_of FROM {table(USER_FEATURES)}"
        )
    if bought:
        types = ", ".join(f"'{t}'" for t in bought)  # canonical event type names (config-checked)
        selects[USER_RECOMMENDATIONS] = (
            f"SELECT c.user_id, c.segment_id, r.rank, r.key AS item_id, r.support, r.lift, r.model_version "
            f"FROM {table(SEGMENTS_CURRENT)} c JOIN {table(SEGMENT_RECOMMENDATIONS)} r "
            # lists of another model (before `recommend` ran after a fit or a republish) are not offered
            f"ON r.segment_id = c.segment_id AND r.model_version = c.model_version AND r.kind = 'item' "
            f"LEFT ANTI JOIN (SELECT DISTINCT user_id, CAST(item_id AS STRING) AS item_id "
            f"FROM {table(EVENTS_SILVER)} WHERE event_type IN ({types})) b "
            f"ON b.user_id = c.user_id AND b.item_id = r.key"
        )
    return selects


def published_rules(profiles: DataFrame) -> dict[int, str] | None:
    """segment id -> SQL predicate of each published segment's surrogate rule (a row per segment);
    None for profiles written before rules existed or without any rule."""
    if "rule_sql" not in profiles.columns:
        return None
    rows = profiles.where("rule_sql IS NOT NULL").select("segment_id", "rule_sql").collect()
    return {r["segment_id"]: r["rule_sql"] for r in rows} or None


def register(spark: SparkSession, min_segment_size: int, bought: Sequence[str] = ("purchase",)) -> list[str]:
    """Create the views as temporary views over the tables' views (store.register_views first);
    none when a table they read is missing, and a warning for one whose tables lack a column it
    reads (written by an older version). Returns the views created."""
    if not all(spark.catalog.tableExists(name) for name in NEEDS):
        return []
    created = []
    rules = (
        published_rules(spark.table(SEGMENT_PROFILES)) if spark.catalog.tableExists(USER_FEATURES) else None
    )
    lists = all(spark.catalog.tableExists(t) for t in (SEGMENT_RECOMMENDATIONS, EVENTS_SILVER))
    for name, select in definitions(min_segment_size, rules=rules, bought=bought if lists else None).items():
        try:
            spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {select}")
        except AnalysisException as exc:  # tables of an older version: the query asked for still runs
            log.warning("view %s not registered: its tables lack a column (%s)", name, str(exc).split(";")[0])
            continue
        created.append(name)
    return created


def persist(store: TableStore, min_segment_size: int, bought: Sequence[str] = ("purchase",)) -> list[str]:
    """Where the tables live in a catalog (storage.catalog / storage.schema: Unity Catalog on
    Databricks), create the views as views of the same schema, over the tables' full names, so
    Databricks SQL, dashboards and BI tools see them without `segment sql`. Path-based lakes get none
    (`segment sql` registers them per session). A view that cannot be created (no CREATE VIEW
    privilege on the schema) is a warning, not a failed fit. Returns the views' full names."""
    segments = store.catalog_name(USER_SEGMENTS)
    if segments is None or not all(store.exists(name) for name in NEEDS):
        return []
    schema = segments.rsplit(".", 1)[0]
    created = []
    rules = published_rules(store.read(SEGMENT_PROFILES)) if store.exists(USER_FEATURES) else None
    lists = all(store.exists(t) for t in (SEGMENT_RECOMMENDATIONS, EVENTS_SILVER))
    selects = definitions(min_segment_size, store.catalog_name, rules, bought if lists else None)
    for name, select in selects.items():
        try:
            store.spark.sql(f"CREATE OR REPLACE VIEW {schema}.{name} AS {select}")
        except AnalysisException as exc:  # no CREATE VIEW privilege on the schema, say: the fit stands
            log.warning("view %s.%s not created: %s", schema, name, str(exc).split("\n")[0])
            continue
        created.append(f"{schema}.{name}")
    log.info("views created in %s: %s", schema, ", ".join(created) or "none")
    return created
