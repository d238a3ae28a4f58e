"""A real `segment` process killed with SIGKILL mid-stage: the audit table shows the run unfinished."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segmentation.cli import main
from segmentation.storage import open_store
from segmentation.tables import PIPELINE_RUNS
from tests.conftest import REPO, make_config


def kill_when(argv: list[str], seen, what: str, poll: float = 0.2) -> int:
    """Start `segment *argv` (its own process group, so the kill reaches its JVM too), SIGKILL it
    the moment `seen()` is true, and return its exit status; fails when it ends before that."""
    segment = Path(sys.executable).parent / "segment"
    proc = subprocess.Popen(
        [str(segment), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not seen():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"segment {argv[0]} ended (exit {proc.returncode}) before {what}")
            time.sleep(poll)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_a_killed_stage_stays_visible_as_running(spark, tmp_path):
    settings = [
        f"storage.root={tmp_path / 'lake'}",
        f"input.path={tmp_path / 'raw'}",
        f"report.path={tmp_path / 'reports'}",
        "generate.users=300",
        "spark.master=local[1]",
    ]
    args = ["--conf", str(REPO / "conf" / "local.yaml")] + [a for s in settings for a in ("--set", s)]
    assert main(["generate", *args]) == 0 and main(["ingest", *args]) == 0
    store = open_store(spark, make_config(tmp_path, *settings).storage)

    def rows():
        if not store.exists(PIPELINE_RUNS):
            return []
        return store.read(PIPELINE_RUNS).where("run_id = 'killed'").collect()

    code = kill_when(["features", *args, "--run-id", "killed"], rows, "it was seen running")
    assert code == -signal.SIGKILL
    assert [(r.stage, r.status, r.finished_at) for r in rows()] == [("features", "running", None)]


@pytest.mark.slow
def test_a_cluster_run_killed_while_publishing_is_never_read_half(spark, lake, tmp_path):
    """kill -9 the moment a new run's first segment table lands: the segment tables then either all
    hold one run, or every reader refuses them with the cause; `segment cluster` again repairs."""
    import shutil

    from segmentation.cluster.stage import published_run
    from segmentation.errors import StageError
    from segmentation.tables import SEGMENT_PROFILES

    shutil.copytree(lake.root / "lake", tmp_path / "lake")
    settings = [
        f"storage.root={tmp_path / 'lake'}",
        f"input.path={lake.root / 'raw'}",
        f"report.path={tmp_path / 'reports'}",
        "clustering.k=[3]",
        "clustering.algorithms=[kmeans]",
        "clustering.stability=off",
        "clustering.candidates=[raw]",  # the subject is publishing, not fitting: no refinement to train
        "spark.master=local[1]",
    ]
    args = ["--conf", str(REPO / "conf" / "local.yaml")] + [a for s in settings for a in ("--set", s)]
    store = open_store(spark, make_config(tmp_path, *settings).storage)
    before = published_run(store)
    version = store.version(SEGMENT_PROFILES)
    kill_when(
        ["cluster", *args, "--run-id", "killed"],
        lambda: store.version(SEGMENT_PROFILES) != version,
        "publishing was seen",
        poll=0.05,
    )
    try:
        assert published_run(store) in (before, "killed")  # whole: one run in every table
    except StageError as exc:
        assert "run `segment cluster` again" in str(exc)
        assert main(["report", *args]) == 1  # a reader refuses the mix instead of mislabelling
    assert main(["cluster", *args, "--run-id", "redo"]) == 0
    assert published_run(store) == "redo"
