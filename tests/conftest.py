"""Shared fixtures: one local Spark session for the whole run; a config rooted in a temp directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from segmentation.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


def make_config(root: Path, *overrides: str) -> Config:
    """conf/local.yaml with storage, input and reports under `root`, plus `overrides`."""
    return load_config(
        [str(REPO / "conf" / "local.yaml")],
        [
            "spark.master=local[2]",
            f"storage.root={root / 'lake'}",
            f"input.path={root / 'raw'}",
            f"report.path={root / 'reports'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from segmentation.spark import get_spark

    session = get_spark(make_config(tmp_path_factory.mktemp("spark")))
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path) -> Config:
    return make_config(tmp_path)
