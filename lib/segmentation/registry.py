"""The one registry of stages: the CLI, `segment run`, `jobs/`, the benchmark and the README read it.

A stage named N lives in `segmentation/N/stage.py` as `run(ctx: StageContext) -> StageResult`; adding a
stage is that package plus one entry here (and `jobs/N.py`, three lines). Entries name their module
instead of importing it, so `segment --help` does not import Spark and torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from segmentation import tables as t
from segmentation.errors import StageError

if TYPE_CHECKING:
    from segmentation.stage import StageContext, StageResult


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    in_pipeline: bool = True  # part of `segment run` (upkeep stages run on their own schedule)

    @property
    def module(self) -> str:
        return f"segmentation.{self.name}.stage"

    def function(self) -> Callable[[StageContext], StageResult]:
        return importlib.import_module(self.module).run


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "raw logs -> bronze, silver and quarantine, every record accounted for",
        reads=("input.path",),
        writes=(t.EVENTS_BRONZE, t.EVENTS_SILVER, t.EVENTS_QUARANTINE),
    ),
    Stage(
        "features",
        "silver -> one scaled behaviour vector per user",
        reads=(t.EVENTS_SILVER,),
        writes=(t.USER_FEATURES, "scaling statistics"),
    ),
    Stage(
        "train",
        "user features -> autoencoder, trained with TorchDistributor",
        reads=(t.USER_FEATURES, "scaling statistics"),
        writes=("model",),
    ),
    Stage(
        "embed",
        "user features -> embeddings, the encoder applied in Spark tasks",
        reads=(t.USER_FEATURES, "model"),
        writes=(t.USER_EMBEDDINGS,),
    ),
    Stage(
        "sequence",
        "each user's last events -> a contrastive sequence encoder (TorchDistributor) and its "
        "embeddings; only when clustering.candidates names sequence",
        reads=(t.EVENTS_SILVER, t.USER_FEATURES, "scaling statistics"),
        writes=(t.USER_SEQUENCES, t.USER_SEQUENCE_EMBEDDINGS, "sequence model"),
    ),
    Stage(
        "cluster",
        "embeddings and features -> evaluated candidate segmentations, the selected one written",
        reads=(t.USER_EMBEDDINGS, t.USER_FEATURES, t.USER_SEQUENCE_EMBEDDINGS, "model"),
        writes=(
            t.USER_SEGMENTS,
            t.USER_SEGMENT_HISTORY,
            t.SEGMENT_CENTROIDS,
            t.SEGMENT_PROFILES,
            t.CLUSTERING_EVALUATION,
            t.K_EVIDENCE,
            t.SEGMENT_LINEAGE,
            t.SEGMENT_TRANSITIONS,
            "segmenter",
        ),
    ),
    Stage(
        "recommend",
        "segments and purchases -> each segment's top items and categories by support and lift, "
        "evaluated on the last days against global popularity",
        reads=(t.USER_SEGMENTS, t.EVENTS_SILVER),
        writes=(t.SEGMENT_RECOMMENDATIONS, t.RECOMMENDATION_EVALUATION),
    ),
    Stage(
        "report",
        "one self-contained HTML page: segment cards, the choice of k, a map, lifts, movement, drift, "
        "data quality, rules, recommendations",
        reads=(
            t.SEGMENT_PROFILES,
            t.CLUSTERING_EVALUATION,
            t.K_EVIDENCE,
            t.SEGMENT_TRANSITIONS,
            t.SEGMENT_DRIFT,
            t.SEGMENT_RECOMMENDATIONS,
            t.RECOMMENDATION_EVALUATION,
            t.PIPELINE_RUNS,
            t.EVENTS_QUARANTINE,
            t.USER_SEGMENTS,
            t.USER_FEATURES,
        ),
        writes=("report",),
    ),
    Stage(
        "assign",
        "users with events since the fit -> their segments under the current segmenter (MERGE), "
        "without retraining",
        reads=(t.EVENTS_SILVER, t.USER_SEGMENTS, t.SEGMENT_CENTROIDS, "segmenter", "scaling statistics"),
        writes=(t.USER_SEGMENTS, t.USER_SEGMENT_HISTORY, t.SEGMENT_DRIFT),
        in_pipeline=False,
    ),
    Stage(
        "stream",
        "files as they arrive under input.path -> ingest and assign per micro-batch (Structured "
        "Streaming, checkpointed)",
        reads=("input.path", t.USER_SEGMENTS, t.SEGMENT_CENTROIDS, "segmenter", "scaling statistics"),
        writes=(
            t.EVENTS_BRONZE,
            t.EVENTS_SILVER,
            t.EVENTS_QUARANTINE,
            t.USER_SEGMENTS,
            t.USER_SEGMENT_HISTORY,
            t.SEGMENT_DRIFT,
            "stream checkpoint",
        ),
        in_pipeline=False,
    ),
    Stage(
        "maintain",
        "nightly table upkeep: purge deletion vectors, OPTIMIZE, VACUUM",
        reads=t.ALL_TABLES,
        writes=t.ALL_TABLES,
        in_pipeline=False,
    ),
)

# Commands that are not stages: they do not run under a run id or appear in pipeline_runs.
COMMANDS: dict[str, str] = {
    "run": "ingest through report under one run id (resumable with --resume)",
    "sql": "Spark SQL over every product table and view",
    "check-drift": "whether the pipeline should retrain under drift.retrain (prints JSON; on Databricks "
    "also the task value `retrain`, for the bundle's condition task)",
    "generate": "development: synthetic raw logs with planted segments",
    "bench": "development: the benchmark",
}

PIPELINE: tuple[Stage, ...] = tuple(s for s in STAGES if s.in_pipeline)


def pipeline_tables() -> tuple[str, ...]:
    """The product tables `segment run` writes (the others: upkeep stages', such as assign's drift)."""
    written = {name for s in PIPELINE for name in s.writes}
    return tuple(name for name in t.ALL_TABLES if name in written or name == t.PIPELINE_RUNS)


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise StageError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def markdown_table() -> str:
    """The README's table of stages."""
    lines = ["| stage | what it does | reads | writes |", "|---|---|---|---|"]
    for s in STAGES:
        lines.append(
            f"| `{s.name}` | {s.help}{'' if s.in_pipeline else ' (not part of `segment run`)'} | "
            f"{', '.join(s.reads)} | {', '.join(s.writes)} |"
        )
    return "\n".join(lines)
