"""The product's table names (DESIGN.md §3), the one place they are spelled, and the schemas of the
tables the product builds row by row (the others take their schema from the frames written)."""

from __future__ import annotations

import re

from segmentation.errors import StorageError

EVENTS_BRONZE = "events_bronze"
EVENTS_SILVER = "events_silver"
EVENTS_QUARANTINE = "events_quarantine"
USER_FEATURES = "user_features"
USER_EMBEDDINGS = "user_embeddings"
USER_SEQUENCES = "user_sequences"
USER_SEQUENCE_EMBEDDINGS = "user_sequence_embeddings"
USER_SEGMENTS = "user_segments"
USER_SEGMENT_HISTORY = "user_segment_history"
SEGMENT_CENTROIDS = "segment_centroids"
SEGMENT_PROFILES = "segment_profiles"
CLUSTERING_EVALUATION = "clustering_evaluation"
K_EVIDENCE = "k_evidence"
SEGMENT_LINEAGE = "segment_lineage"
SEGMENT_TRANSITIONS = "segment_transitions"
SEGMENT_DRIFT = "segment_drift"
SEGMENT_RECOMMENDATIONS = "segment_recommendations"
RECOMMENDATION_EVALUATION = "recommendation_evaluation"
PIPELINE_RUNS = "pipeline_runs"

ALL_TABLES = (
    EVENTS_BRONZE,
    EVENTS_SILVER,
    EVENTS_QUARANTINE,
    USER_FEATURES,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
    USER_SEQUENCE_EMBEDDINGS,
    USER_SEGMENTS,
    USER_SEGMENT_HISTORY,
    SEGMENT_CENTROIDS,
    SEGMENT_PROFILES,
    CLUSTERING_EVALUATION,
    K_EVIDENCE,
    SEGMENT_LINEAGE,
    SEGMENT_TRANSITIONS,
    SEGMENT_DRIFT,
    SEGMENT_RECOMMENDATIONS,
    RECOMMENDATION_EVALUATION,
    PIPELINE_RUNS,
)

# events_silver's columns: the canonical fields (DESIGN.md §3), then what ingest derives. BASE: as
# silver holds them before sessions and bot flags are derived (again, when partitions are rebuilt).
# silver's event_type values: the typed ones, then `other` (raw types no mapping names, where kept)
TYPED_EVENTS = ("view", "search", "cart", "purchase", "rate", "return")
EVENT_TYPES = (*TYPED_EVENTS, "other")
CANONICAL_FIELDS = (
    "user_id",
    "event_time",
    "event_type",
    "item_id",
    "category",
    "value",
    "quantity",
    "session_id",
    "device",
)
SILVER_BASE_COLUMNS = ("event_id", *CANONICAL_FIELDS, "source_file", "run_id", "event_date")
SILVER_COLUMNS = (
    "event_id",
    *CANONICAL_FIELDS,
    "session_inferred",
    "is_bot",
    "bot_reason",
    "source_file",
    "run_id",
    "event_date",
)
PIPELINE_RUNS_SCHEMA = (
    "run_id string, stage string, status string, started_at timestamp, finished_at timestamp, "
    "rows_in long, rows_out long, rows_quarantined long, rows_duplicate long, details string"
)
CLUSTERING_EVALUATION_SCHEMA = (
    "run_id string, representation string, algorithm string, k int, silhouette double, "
    "calinski_harabasz double, davies_bouldin double, wssse double, min_segment_share double, "
    "stability_ari double, selected boolean, silhouette_common double, calinski_harabasz_common double, "
    "davies_bouldin_common double, selection_reason string, k_rule string, jaccard_min double, "
    "jaccard_mean double"
)
# The evidence for k (cluster/kselect.py): one row per (run, representation, k) on the driver sample.
K_EVIDENCE_SCHEMA = (
    "run_id string, representation string, k int, sample_rows int, inertia double, silhouette double, "
    "prediction_strength double, gap double, gap_se double, jaccard_min double, jaccard_mean double, "
    "chosen boolean, rule string, reason string"
)

# Stable segment ids (cluster/identity.py): per fit, each segment and the previous one it continues
# (status matched | new | vanished; `cluster` is the model's own cluster index), and how many users
# went from each previous segment to each new one (null: a user new to this fit, or one it left out).
SEGMENT_LINEAGE_SCHEMA = (
    "run_id string, segment_id int, cluster int, previous_run_id string, previous_segment_id int, "
    "users long, previous_users long, overlap long, jaccard double, status string"
)
SEGMENT_TRANSITIONS_SCHEMA = (
    "run_id string, previous_run_id string, from_segment int, to_segment int, users long"
)

# Drift (assign/drift.py): per assign run, each raw feature and the segment shares of the scored users
# against the fitted snapshot (kind feature | segment_share), and one kind `summary` row named
# retrain_recommended whose `drifted` says whether any statistic passed its threshold.
SEGMENT_DRIFT_SCHEMA = (
    "run_id string, model_version string, kind string, name string, reference_rows long, batch_rows long, "
    "bins int, psi double, js_distance double, threshold double, alpha double, drifted boolean, "
    "measured_at timestamp"
)

# segment_recommendations: per published segment, the top items (kind `item`) and categories (kind
# `category`) its users buy, ranked by recommend.rank_by, with buyers, support (share of the segment's
# users who bought it) and lift (support / the share of all segmented users who bought it).
SEGMENT_RECOMMENDATIONS_SCHEMA = (
    "segment_id int, kind string, rank int, key string, buyers long, support double, lift double, "
    "model_version string, run_id string"
)
# recommendation_evaluation: a temporal split (lists from events before `cutoff`, scored on the
# purchases after it) of the segment lists against global popularity; per segment, and segment_id
# NULL for all evaluated users together.
RECOMMENDATION_EVALUATION_SCHEMA = (
    "run_id string, method string, segment_id int, users long, hit_rate double, ndcg double, k int, "
    "cutoff timestamp"
)

# Views over the tables (registered for `segment sql`; `views.py` builds their SQL): each user's current
# segment, and each segment of the current model; segments under privacy.min_segment_size are left out.
SEGMENTS_CURRENT = "segments_current"
SEGMENT_SUMMARY = "segment_summary"
# Each user of user_features with the segment the current model's surrogate rules give it: a CASE over
# the features (segment_profiles.rule_sql), so a team with only SQL assigns users (cluster/rules.py).
SEGMENT_RULES_ASSIGN = "segment_rules_assign"
# Each current user's segment's recommended items, less those the user already bought.
USER_RECOMMENDATIONS = "user_recommendations"


def columns(schema: str) -> tuple[str, ...]:
    """The column names of a DDL schema string above."""
    return tuple(part.strip().split(" ", 1)[0] for part in schema.split(","))


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_table_name(name: str) -> str:
    """Table names become SQL identifiers and directory names: only plain identifiers pass."""
    if not _IDENTIFIER.match(name):
        raise StorageError(f"invalid table name {name!r}: use letters, digits and underscores")
    return name
