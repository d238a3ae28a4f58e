"""The wheel carries everything a run needs (defaults and resources inside the package), as on
Databricks or a cluster where the package is installed from a wheel, not a source tree."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from tests.conftest import python_with_dependencies_only

pytestmark = pytest.mark.slow


def test_wheel_metadata_and_contents(wheel):
    assert wheel.name.startswith("deep_user_segmentation-")  # `segmentation` on PyPI is someone else's
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "segmentation/resources/base.yaml" in names
    assert "segmentation/resources/log4j2.properties" in names
    assert "Name: deep-user-segmentation" in metadata
    assert "Requires-Python: >=3.11" in metadata


def test_the_wheel_installs_into_a_clean_venv_and_runs_stages(wheel, tmp_path):
    python = python_with_dependencies_only(tmp_path / "venv", with_pip=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    segment = tmp_path / "venv" / "bin" / "segment"
    where = subprocess.run(
        [str(python), "-c", "import segmentation; print(segmentation.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert str(tmp_path / "venv") in where  # the installed copy, not the source tree

    work = tmp_path / "run"
    work.mkdir()
    settings = [
        f"storage.root={work / 'lake'}",
        f"input.path={work / 'raw'}",
        "spark.master=local[1]",
        "generate.users=200",
    ]
    args = [a for item in settings for a in ("--set", item)]
    for stage in ("generate", "ingest"):
        proc = subprocess.run(
            [str(segment), stage, *args], capture_output=True, text=True, timeout=600, cwd=work
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows_out"] > 0
    assert result["rows_in"] == result["rows_out"] + result["rows_quarantined"] + result["rows_duplicate"]
