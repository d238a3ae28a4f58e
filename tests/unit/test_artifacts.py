"""Artifact paths from run ids as schedulers give them (pure: no SparkSession)."""

from pathlib import Path

import pytest

from segmentation.artifacts import ArtifactPaths, path_component

RUN_IDS = [
    "20261130T041421Z-c89b2a",  # the product's own: unchanged
    "scheduled__2026-11-29T10:00:00+00:00",  # Airflow
    "manual__2026-11-29T10:00:00.123456+00:00",
    "1234567890",  # Databricks {{job.run_id}}
    "../../../../escape",
    "..",
    ".",
    "a/b",
    "a~2Fb",  # what a/b would become if '~' were not escaped too
    "ünïcode run",
    "",
]


def test_components_are_single_safe_names_and_one_to_one():
    components = [path_component(run_id) for run_id in RUN_IDS]
    assert len(set(components)) == len(RUN_IDS)  # injective on these, '~' included
    for component in components:
        assert component not in (".", "..") and not component.startswith(".")
        assert all(c.isalnum() and c.isascii() or c in "._-~" for c in component), component
    assert path_component(RUN_IDS[0]) == RUN_IDS[0]


@pytest.mark.parametrize("run_id", RUN_IDS)
def test_every_artifact_of_a_run_stays_under_its_root(tmp_path, run_id):
    paths = ArtifactPaths(root=tmp_path / "artifacts", reports=tmp_path / "reports", truth=tmp_path / "t")
    for path, root in (
        (paths.scaling(run_id), paths.root),
        (paths.model(run_id), paths.root),
        (paths.checkpoint(run_id), paths.root),
        (paths.segmenter(run_id), paths.root),
        (paths.report(run_id), paths.reports),
    ):
        resolved = Path(path).resolve()
        assert resolved.is_relative_to(root.resolve()), (run_id, path)
        assert ":" not in str(resolved.relative_to(root.resolve())) and "%" not in str(resolved)
