"""Shared fixtures: one local Spark session for the whole run (with Delta Lake loaded, so both engines
run in it); a config rooted in a temp directory; one generated lake the pipeline ran on, shared by the
end-to-end, engine and reader tests."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from segmentation.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers: a test that needs a SparkSession (directly or through another fixture) is marked `spark`;
    pipeline and cluster tests are also marked `slow`; the rest is the pure tier (`make test-fast`)."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


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


# A Spark Connect server's URL: the session fixture is then a Connect client of it (test_connect runs
# the table layer's contract tests so, in a process of their own).
REMOTE_ENV = "SEGMENT_TEST_SPARK_REMOTE"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    import os

    from segmentation.spark import get_spark

    remote = os.environ.get(REMOTE_ENV)
    overrides = [f"spark.remote={remote}"] if remote else []
    session = get_spark(make_config(tmp_path_factory.mktemp("spark"), *overrides))
    yield session
    session.stop()


def cli_args(root: Path, *overrides: str) -> list[str]:
    """The `segment` arguments for the config `make_config(root, *overrides)` builds (less its master)."""
    args = ["--conf", str(REPO / "conf" / "local.yaml")]
    for item in (
        f"storage.root={root / 'lake'}",
        f"input.path={root / 'raw'}",
        f"report.path={root / 'reports'}",
        *overrides,
    ):
        args += ["--set", item]
    return args


@pytest.fixture
def cfg(tmp_path) -> Config:
    return make_config(tmp_path)


@dataclass(frozen=True)
class Lake:
    """`segment generate` then `segment run` on ~2k users, through the CLI as a user runs them."""

    root: Path
    args: list[str]
    cfg: Config
    out: str  # what `segment run` printed


LAKE_SETTINGS = (
    "generate.users=2000",
    "clustering.k=[4, 5]",
    "training.epochs=8",
    "training.batch_size=32",  # 2k users: small batches give the autoencoder enough steps
    # every representation, so every product table exists (the sequence stage builds only for this)
    "clustering.candidates=[embedding, raw, idec, sequence]",
    "sequence.epochs=3",
)


@pytest.fixture(scope="session")
def lake(spark, tmp_path_factory) -> Lake:
    from segmentation.cli import main

    root = tmp_path_factory.mktemp("lake")
    cfg = make_config(root, *LAKE_SETTINGS)
    args = cli_args(root, *LAKE_SETTINGS)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["generate", *args]) == 0
        assert main(["run", *args]) == 0
    return Lake(root, args, cfg, printed.getvalue())


# ---------------------------------------------------------------- packaging and the cluster


def python_with_dependencies_only(directory: Path, with_pip: bool = False) -> Path:
    """A fresh venv that sees this environment's third-party packages (through a .pth file) but not
    the product: `segmentation` imports only from what is installed or shipped into it. Stands for a
    cluster node or a Databricks runtime that has the dependencies but not this package."""
    import subprocess
    import sys
    import sysconfig

    args = [sys.executable, "-m", "venv", str(directory)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(args, check=True, capture_output=True)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A plain path line: the directory joins sys.path, its own .pth files (the editable install) do not run.
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="session")
def wheel() -> Path:
    """The package's wheel in dist/, built by `make wheel` (which also writes the same file as
    dist/deep_user_segmentation.zip, the name spark-submit --py-files takes)."""
    import subprocess

    # -o: never rebuild the venv the tests are running in (make test has just made it current)
    subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.setup-done", "wheel"],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    (built,) = (REPO / "dist").glob("deep_user_segmentation-*.whl")
    return built


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone master and two workers (1 core, 2 GiB each) on 127.0.0.1, up once both
    workers registered; stopped at the end of the session, also when a test failed."""
    from segmentation.standalone import StandaloneCluster

    cluster = StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def shared_dataset(name: str) -> Path:
    """A real data set of `../shared/datasets/` (beside the project; SEGMENT_DATASETS overrides)."""
    import os

    candidates = [Path(os.environ["SEGMENT_DATASETS"])] if os.environ.get("SEGMENT_DATASETS") else []
    candidates += [REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")]
    for root in candidates:
        if (root / name / "facts.json").is_file():
            return root / name
    pytest.skip(f"data set {name} not found under {', '.join(map(str, candidates))}")
