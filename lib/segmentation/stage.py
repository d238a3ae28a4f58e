"""The stage contract: what every stage gets (`StageContext`) and what it returns (`StageResult`).

A stage is `run(ctx: StageContext) -> SomeResult` in its package's `stage.py`: it reads through
`ctx.store`, calls the package's pure `DataFrame -> DataFrame` functions, writes through `ctx.store`
and returns a typed result. The registry (`segmentation.registry`) names every stage once;
`segmentation.pipeline` runs them and records each run in `pipeline_runs`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from segmentation.artifacts import ArtifactPaths
from segmentation.config import Config
from segmentation.spark import Phases, describe
from segmentation.storage import TableStore, open_store


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class StageContext:
    """Everything a stage works with, built once per run."""

    spark: SparkSession
    cfg: Config
    store: TableStore
    run_id: str
    paths: ArtifactPaths

    @classmethod
    def create(cls, spark: SparkSession, cfg: Config, run_id: str | None = None) -> StageContext:
        return cls(spark, cfg, open_store(spark, cfg.storage), run_id or new_run_id(), cfg.paths)

    def describe(self, text: str) -> None:
        """Name the Spark jobs that follow (the Spark UI then reads like the pipeline)."""
        describe(self.spark, text)

    def phases(self, stage: str) -> Phases:
        """Timed, named phases of a stage (their seconds go into the stage's result)."""
        return Phases(self.spark, stage)


def summary_field(default: Any = None, **kwargs: Any) -> Any:
    """A result field that `segment <stage>` prints (every field goes to `pipeline_runs.details`)."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return field(metadata={"summary": True}, **kwargs)


COUNTS = ("rows_in", "rows_out", "rows_quarantined", "rows_duplicate")


@dataclass
class StageResult:
    """The counts every stage reports to `pipeline_runs`. Stages subclass it with typed fields of their
    own; those fields (and `seconds`) become the row's `details` JSON."""

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    seconds: float | None = summary_field()

    @property
    def details(self) -> dict[str, Any]:
        """The stage-specific fields, as `pipeline_runs.details` stores them."""
        return {
            f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in COUNTS
        }

    def summary(self) -> dict[str, Any]:
        """What the CLI prints: the counts and the fields marked with `summary_field`."""
        marked = [f.name for f in dataclasses.fields(self) if f.metadata.get("summary")]
        return {name: _plain(getattr(self, name)) for name in (*COUNTS, *marked)}


@dataclass
class FailedStage(StageResult):
    """What `pipeline_runs` records for a stage that raised."""

    error: str = ""


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
