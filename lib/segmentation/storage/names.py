"""The product's table names (DESIGN.md §3): the one place they are spelled."""

from __future__ import annotations

import re

from segmentation.errors import StorageError

EVENTS_BRONZE = "events_bronze"
EVENTS_SILVER = "events_silver"
EVENTS_QUARANTINE = "events_quarantine"
USER_FEATURES = "user_features"
USER_EMBEDDINGS = "user_embeddings"
USER_SEGMENTS = "user_segments"
SEGMENT_CENTROIDS = "segment_centroids"
SEGMENT_PROFILES = "segment_profiles"
CLUSTERING_EVALUATION = "clustering_evaluation"
PIPELINE_RUNS = "pipeline_runs"

ALL_TABLES = (
    EVENTS_BRONZE,
    EVENTS_SILVER,
    EVENTS_QUARANTINE,
    USER_FEATURES,
    USER_EMBEDDINGS,
    USER_SEGMENTS,
    SEGMENT_CENTROIDS,
    SEGMENT_PROFILES,
    CLUSTERING_EVALUATION,
    PIPELINE_RUNS,
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_table_name(name: str) -> str:
    """Table names become SQL identifiers and directory names: only plain identifiers pass."""
    if not _IDENTIFIER.match(name):
        raise StorageError(f"invalid table name {name!r}: use letters, digits and underscores")
    return name
