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
    assert "segmentation/report/templates/report.html.j2" in names  # the report page
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


# A Databricks runtime brings its own Spark (not PyPI's pyspark: installing that over it breaks the
# cluster), Delta Lake and pyarrow, and newer versions of the rest than a year-old package knows of.
PROVIDED = {"pyspark", "delta-spark", "pyarrow"}
RUNTIME_SHIPPED = {"torch", "numpy", "pandas", "scikit-learn", "matplotlib", "mlflow-skinny", "pyyaml"}


def _requirements(wheel):
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_spark_delta_and_pyarrow_are_provided_not_required(wheel):
    requirements = _requirements(wheel)
    required = {r.name.lower() for r in requirements if r.marker is None}
    extra = {
        r.name.lower() for r in requirements if r.marker is not None and 'extra == "spark"' in str(r.marker)
    }
    assert not required & PROVIDED, f"a runtime's own build would be replaced: {required & PROVIDED}"
    assert extra == PROVIDED, "everywhere else `pip install deep-user-segmentation[spark]` brings them"
    # Only lower bounds on what a runtime ships: a newer runtime can never be refused (or downgraded).
    for r in requirements:
        if r.marker is None and r.name.lower() in RUNTIME_SHIPPED:
            assert all(s.operator in (">=", ">") for s in r.specifier), f"{r} caps a runtime library"


def test_installing_the_wheel_into_a_runtime_replaces_nothing(wheel, tmp_path):
    """A dry-run resolve of the wheel (and of its spark extra) in an environment that already has
    every library, as a runtime does: with no index to download from, pip must find everything
    satisfied and plan to install the product alone. (pip and setuptools are the environment's too: a
    venv's own bundled setuptools is older than torch allows.)"""
    python = python_with_dependencies_only(tmp_path / "venv")
    for spec in (str(wheel), f"deep-user-segmentation[spark] @ {wheel.as_uri()}"):
        report = tmp_path / "report.json"
        proc = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-index",
                "--quiet",
                "--report",
                str(report),
                spec,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        planned = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
        assert planned == ["deep-user-segmentation"], planned


def test_without_spark_the_cli_says_which_extra_to_install(wheel, tmp_path):
    """A bare `pip install` of the wheel outside a runtime has no Spark: one line that says what to
    install and a non-zero exit, not an ImportError traceback."""
    import sys

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "bare")], check=True, capture_output=True)
    python = tmp_path / "bare" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [str(tmp_path / "bare" / "bin" / "segment"), "ingest"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "segment ingest: error: pyspark is not installed: it is the package's `spark` extra (Databricks "
        "runtimes provide it); pip install 'deep-user-segmentation[spark]'"
    ]
