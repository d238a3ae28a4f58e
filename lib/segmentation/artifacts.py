"""Non-table artifacts: where each one lives (`ArtifactPaths`, the one place their paths are spelled),
the atomic write every one of them goes through, and the pointers that name the current version.

Stdlib only (and the product's errors): the training processes import it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segmentation.errors import StageError

if TYPE_CHECKING:
    from segmentation.config import Config


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def path_component(name: str) -> str:
    """`name` (a run id as a scheduler gives it: `scheduled__2026-11-29T10:00:00+00:00`, `../x`) as one
    safe directory or file name: letters, digits, `.`, `_` and `-` stay, every other byte becomes `~XX`
    (so `~` always starts an escape and the mapping is one-to-one), and a leading `.` is escaped too, so
    the result is never `.`, `..` or hidden. Ids the product generates map to themselves."""
    out = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        out.append(char if char in _SAFE and not (i == 0 and char == ".") else f"~{byte:02X}")
    return "".join(out) or "~"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(temporary path)` and rename it into place: readers (and a crash
    mid-write) see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per process: two writers of the same artifact (training ranks, retries) never share a temporary.
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def publish(pointer: Path, version: str) -> None:
    """Point `pointer` at `version` atomically."""
    atomic_write_text(pointer, version)


def published(pointer: Path) -> str | None:
    """The version `pointer` names, or None before anything was published."""
    return pointer.read_text().strip() if pointer.is_file() else None


@dataclass(frozen=True)
class ArtifactPaths:
    """Every non-table artifact's location, from `storage.artifacts` (default `<storage.root>/_artifacts`),
    `report.path`, `input.path` and `clustering.truth_path`."""

    root: Path
    reports: Path
    truth: Path
    stream_checkpoint_setting: Path | None = None  # stream.checkpoint, when set

    @classmethod
    def from_config(cls, cfg: Config) -> ArtifactPaths:
        root = Path(cfg.storage.artifacts or str(Path(cfg.storage.root) / "_artifacts"))
        truth = cfg.clustering.truth_path or cls.planted_truth_beside(cfg.input.path)
        checkpoint = Path(cfg.stream.checkpoint) if cfg.stream.checkpoint else None
        return cls(root, Path(cfg.report.path), Path(truth), checkpoint)

    @staticmethod
    def planted_truth_beside(input_path: str) -> Path:
        """Where `segment generate` writes the planted truth: beside the raw logs, `<input.path>_truth/`."""
        raw = Path(input_path)
        return raw.parent / f"{raw.name}_truth"

    # Every path below that a run id or version names goes through `path_component`: run ids come from
    # schedulers as they are, and none may leave the root or break a Hadoop path.

    def scaling(self, features_run: str) -> Path:
        """Scaling statistics of the user_features snapshot written by `features_run`."""
        return self.root / "user_features" / path_component(features_run) / "scaling.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, version: str) -> Path:
        return self.models / path_component(version) / "model.pt"

    @property
    def current_model(self) -> Path:
        """The pointer naming the model downstream stages use: the last one `train` published."""
        return self.models / "CURRENT"

    def current_model_file(self) -> Path:
        """The model file the pointer names; a StageError before any model was published."""
        version = published(self.current_model)
        if version is None:
            raise StageError(f"no trained model under {self.models}: run the train stage first")
        return self.model(version)

    def checkpoint(self, run_id: str) -> Path:
        return self.root / "checkpoints" / path_component(run_id) / "checkpoint.pt"

    def refined_model(self, run_id: str) -> Path:
        """The IDEC-refined autoencoder (with its centres) a cluster run trained."""
        return self.root / "refined" / path_component(run_id) / "model.pt"

    def refine_checkpoint(self, run_id: str) -> Path:
        return self.root / "checkpoints" / path_component(run_id) / "refine.pt"

    def sequence_model(self, run_id: str) -> Path:
        """The sequence encoder a `sequence` run trained."""
        return self.root / "sequence" / path_component(run_id) / "model.pt"

    def sequence_checkpoint(self, run_id: str) -> Path:
        return self.root / "checkpoints" / path_component(run_id) / "sequence.pt"

    @property
    def segmenters(self) -> Path:
        """Fitted segmentation models (one per cluster run) and the CURRENT pointer `assign` follows."""
        return self.root / "segmenters"

    def segmenter(self, run_id: str) -> Path:
        return self.segmenters / path_component(run_id)

    def drift_reference(self, run_id: str) -> Path:
        """The fitted snapshot's binned features (drift's reference), beside the segmenter."""
        return self.segmenter(run_id) / "drift_reference.json"

    @property
    def current_segmenter(self) -> Path:
        return self.segmenters / "CURRENT"

    def report(self, run_id: str) -> Path:
        return self.reports / f"report-{path_component(run_id)}.html"

    @property
    def stream_checkpoint(self) -> Path:
        """`segment stream`'s checkpoint: which files it processed, which micro-batch comes next."""
        return self.stream_checkpoint_setting or self.root / "stream" / "checkpoint"

    def scratch(self, run_id: str) -> Path:
        """A run's temporary files (what a Spark Connect session has Spark write and read back)."""
        return self.root / "scratch" / path_component(run_id)

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"
