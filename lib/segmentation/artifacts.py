"""Non-table artifacts (models, scaling statistics) and the pointers that name the current one."""

from __future__ import annotations

from pathlib import Path


def publish(pointer: Path, version: str) -> None:
    """Point `pointer` at `version` atomically: readers see the old or the new version, never a torn file."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(version)
    tmp.replace(pointer)


def published(pointer: Path) -> str | None:
    """The version `pointer` names, or None before anything was published."""
    return pointer.read_text().strip() if pointer.is_file() else None
