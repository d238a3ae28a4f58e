"""The segmenter manifest: what assign needs, refused when an older version saved less."""

import json

import pytest

from segmentation.artifacts import ArtifactPaths
from segmentation.cluster.segmenter import MANIFEST, Segmenter
from segmentation.errors import StageError

SAVED = dict(
    run_id="c1",
    representation="idec",
    algorithm="kmeans",
    k=5,
    autoencoder_version="m1",
    encoder_version="c1",
    features_run_id="f1",
    features_as_of="2026-09-30T23:59:00+00:00",
    sequence_events=None,
    segment_ids=[0, 3, 1, 2, 4],
)


def _paths(tmp_path, manifest: dict) -> ArtifactPaths:
    paths = ArtifactPaths(root=tmp_path, reports=tmp_path / "reports", truth=tmp_path / "truth")
    paths.segmenter("c1").mkdir(parents=True)
    (paths.segmenter("c1") / MANIFEST).write_text(json.dumps(manifest))
    return paths


def test_a_manifest_loads_with_its_snapshot_time(tmp_path):
    segmenter = Segmenter.load(_paths(tmp_path, SAVED), "c1")
    assert segmenter == Segmenter(**SAVED)
    assert segmenter.as_of.isoformat() == "2026-09-30T23:59:00+00:00"


def test_a_manifest_from_before_assign_is_refused_naming_what_it_lacks(tmp_path):
    old = {key: value for key, value in SAVED.items() if key not in ("encoder_version", "features_as_of")}
    old["encoder"] = "/somewhere/refined/c1/model.pt"  # the absolute path the first version saved
    with pytest.raises(
        StageError, match=r"\(no encoder_version, features_as_of\): run `segment cluster` again"
    ):
        Segmenter.load(_paths(tmp_path, old), "c1")
