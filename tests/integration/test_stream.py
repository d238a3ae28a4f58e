"""`segment stream` on a copy of the shared lake: a second day of logs arrives as files (returning users,
new users, a malformed line, a record without a user, an exact duplicate). The stream, submitted to the
standalone cluster, is killed with SIGKILL in the middle of a micro-batch and started again from its
checkpoint; then every record is accounted for exactly once, per micro-batch in pipeline_runs and in
the tables, and exactly the users with new events got new segment rows. A continuous stream
(processing-time trigger, local) then takes a file dropped while it runs and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.artifacts import published
from segmentation.ingest.readers import normalized_file
from segmentation.storage import open_store
from segmentation.tables import (
    EVENTS_BRONZE,
    EVENTS_QUARANTINE,
    EVENTS_SILVER,
    PIPELINE_RUNS,
    SEGMENT_DRIFT,
    USER_SEGMENTS,
)
from tests.conftest import LAKE_SETTINGS, REPO, make_config, python_with_dependencies_only
from tests.integration.segment_checks import assert_history_follows_the_segments, day2_logs

pytestmark = pytest.mark.slow

FILES = 2  # one micro-batch each: the second is the one killed, then the one redone after its work landed
BAD_LINES = [
    '{"user_id": "u1", "event_time": ',
    '{"event_time": "2026-10-01T10:00:00+00:00", "event_type": "view"}',
]


def _sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _incoming(spark, store, users: list[str], day2: Path, folder: Path) -> list[str]:
    """Day-2 logs of 12 returning and 8 new users dealt into FILES files (a user's events spread over
    the micro-batches), the second file with two bad lines, the last repeating a line of the first.
    Returns every line written."""
    day2_logs(spark, store, users[:12], users[12:20], day2)
    lines = [line for part in sorted(day2.glob("part-*.json")) for line in part.read_text().splitlines()]
    dealt = [lines[i::FILES] for i in range(FILES)]
    dealt[1] += BAD_LINES
    dealt[-1].append(dealt[0][0])
    folder.mkdir()
    for i, chunk in enumerate(dealt):
        (folder / f"day2-{i}.json").write_text("\n".join(chunk) + "\n")
    return [line for chunk in dealt for line in chunk]


def _lake_copy(lake, tmp_path: Path, *extra: str) -> list[str]:
    """A copy of the shared lake under tmp_path, read from `incoming/`: the settings that point at it."""
    shutil.copytree(lake.root / "lake", tmp_path / "lake")
    return [
        f"storage.root={tmp_path / 'lake'}",
        f"input.path={tmp_path / 'incoming'}",
        f"report.path={tmp_path / 'reports'}",
        *LAKE_SETTINGS,
        *extra,
    ]


def _wait(proc: subprocess.Popen, seconds: float) -> str:
    out, _ = proc.communicate(timeout=seconds)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_mid_batch(proc: subprocess.Popen, checkpoint: Path, silver_log: Path) -> None:
    """SIGKILL the stream the moment the second micro-batch has committed to silver: after its ingest's
    first commit, before its quarantine and bronze appends or its assign are known to have landed."""

    def commits() -> int:
        return len(list(silver_log.glob("[0-9]*.json")))

    def poll(done) -> None:
        deadline = time.monotonic() + 600
        while not done():
            if proc.poll() is not None:
                raise AssertionError(f"the stream ended before it was killed: {proc.stdout.read()[-4000:]}")
            assert time.monotonic() < deadline, "no micro-batch to kill within 10 minutes"
            time.sleep(0.05)

    poll(lambda: (checkpoint / "commits" / "0").exists())
    first = commits()
    poll(lambda: commits() > first)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (checkpoint / "commits" / "1").exists()  # killed inside micro-batch 1


def test_stream_killed_mid_batch_and_restarted_loses_and_doubles_nothing(
    spark, lake, standalone_cluster, wheel, tmp_path
):
    settings = _lake_copy(lake, tmp_path, "stream.max_files_per_trigger=1")
    cfg = make_config(tmp_path, *settings)
    store = open_store(spark, cfg.storage)
    before = {r.user_id: r for r in store.read(USER_SEGMENTS).collect()}  # 2k users: small
    users = sorted(before)
    lines = _incoming(spark, store, users, tmp_path / "day2", tmp_path / "incoming")
    checkpoint = cfg.paths.stream_checkpoint

    # spark-submit to the standalone cluster, the product shipped as README "Run on a cluster" ships it
    python = python_with_dependencies_only(tmp_path / "node-env")
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python)}
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        *("--master", standalone_cluster.master_url),
        *("--py-files", str(wheel.with_name("deep_user_segmentation.zip"))),
        "jobs/stream.py",
        *("--conf", str(REPO / "conf" / "cluster.yaml")),
        *_sets(settings),
    ]

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    _kill_mid_batch(start(), checkpoint, tmp_path / "lake" / EVENTS_SILVER / "_delta_log")
    runs = store.read(PIPELINE_RUNS).where("stage = 'stream_batch'")
    cut = {r.run_id: r.status for r in runs.collect()}
    assert sorted(cut.values()) == ["running", "success"]  # the killed micro-batch never finished
    out = _wait(start(), 900)
    assert '"stage": "stream"' in out

    # One row per micro-batch, the killed one's replaced by its redo: every batch succeeded once.
    rows = store.read(PIPELINE_RUNS).where("stage = 'stream_batch'").collect()
    assert len(rows) == FILES and {r.status for r in rows} == {"success"}
    assert set(cut) <= {r.run_id for r in rows}
    details = sorted((json.loads(r.details) for r in rows), key=lambda d: d["batch_id"])
    assert [d["batch_id"] for d in details] == list(range(FILES))
    assert all(d["files"] == 1 for d in details)
    # Nothing lost: every line read once, and each batch reconciles.
    for r in rows:
        assert r.rows_in == r.rows_out + r.rows_quarantined + r.rows_duplicate, r
    assert sum(r.rows_in for r in rows) == len(lines)
    assert sum(r.rows_quarantined for r in rows) == len(BAD_LINES)
    assert sum(r.rows_duplicate for r in rows) == 1  # the repeated line

    # Nothing doubled: bronze holds each line once, quarantine the bad lines once, silver each event once.
    incoming = normalized_file(F.col("source_file")).contains("/incoming/")
    assert store.read(EVENTS_BRONZE).where(incoming).count() == len(lines)
    assert store.read(EVENTS_QUARANTINE).where(incoming).count() == len(BAD_LINES)
    silver = store.read(EVENTS_SILVER)
    kept = silver.where(incoming)
    assert kept.count() == len(lines) - len(BAD_LINES) - 1
    assert silver.groupBy("event_id").count().where("count > 1").count() == 0

    # Exactly the users with new events were assigned, under the published model; the rest untouched.
    after = {r.user_id: r for r in store.read(USER_SEGMENTS).collect()}
    assigned = {u for u, r in after.items() if r.assigned_by == "assign"}
    assert assigned == set(users[:12]) | {f"new-{u}" for u in users[12:20]}
    assert all(after[u] == before[u] for u in set(before) - assigned)
    model = published(cfg.paths.current_segmenter)
    assert {after[u].model_version for u in assigned} == {model}
    assert {after[u].run_id for u in assigned} <= {r.run_id for r in rows}
    assert_history_follows_the_segments(store)
    measured = store.read(SEGMENT_DRIFT).select("run_id").distinct().collect()
    assert {r.run_id for r in measured} <= {r.run_id for r in rows} and measured  # drift per batch

    # The last micro-batch's commit marker removed, as if killed after all its work but before Spark
    # recorded it: the restart redoes it, finds its file in bronze, reads its counts back from the
    # tables and commits nothing to them.
    counts = {r.run_id: (r.rows_in, r.rows_out, r.rows_quarantined, r.rows_duplicate) for r in rows}
    tables = (EVENTS_SILVER, EVENTS_BRONZE, EVENTS_QUARANTINE, USER_SEGMENTS)
    versions = {name: store.snapshot(name).version for name in tables}
    for marker in (str(FILES - 1), f".{FILES - 1}.crc"):
        (checkpoint / "commits" / marker).unlink(missing_ok=True)
    _wait(start(), 600)
    again = store.read(PIPELINE_RUNS).where("stage = 'stream_batch'").collect()
    assert {r.run_id: (r.rows_in, r.rows_out, r.rows_quarantined, r.rows_duplicate) for r in again} == counts
    redone = next(json.loads(r.details) for r in again if json.loads(r.details)["batch_id"] == FILES - 1)
    assert redone["files_seen_before"] == 1 and redone["assign"]["users_written"] == 0
    assert {name: store.snapshot(name).version for name in tables} == versions
    assert (checkpoint / "commits" / str(FILES - 1)).exists()


def test_continuous_stream_takes_new_files_and_stops_on_sigterm(spark, lake, tmp_path):
    settings = _lake_copy(lake, tmp_path, "stream.trigger=processing_time", "stream.interval=2 seconds")
    cfg = make_config(tmp_path, *settings)
    store = open_store(spark, cfg.storage)
    users = sorted(r.user_id for r in store.read(USER_SEGMENTS).select("user_id").collect())
    (tmp_path / "incoming").mkdir()
    command = [
        sys.executable,
        "-m",
        "segmentation.cli",
        "stream",
        "--conf",
        str(REPO / "conf" / "local.yaml"),
    ]
    proc = subprocess.Popen(
        [*command, *_sets(settings)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        day2_logs(spark, store, users[:3], users[3:5], tmp_path / "day2")
        (part,) = (tmp_path / "day2").glob("part-*.json")
        # while the stream runs; written under a hidden name, then renamed: files must appear whole
        shutil.copy(part, tmp_path / "incoming" / ".arrived.json")
        (tmp_path / "incoming" / ".arrived.json").rename(tmp_path / "incoming" / "arrived.json")
        commit = cfg.paths.stream_checkpoint / "commits" / "0"
        deadline = time.monotonic() + 600
        while not commit.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-4000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out = _wait(proc, 300)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(next(line for line in out.splitlines() if line.startswith('{"stage": "stream"')))
    assert summary["stopped_by_signal"] is True and summary["batches"] >= 1
    assert summary["rows_in"] == len(part.read_text().splitlines())
    assigned = {r.user_id for r in store.read(USER_SEGMENTS).where("assigned_by = 'assign'").collect()}
    assert assigned == set(users[:3]) | {f"new-{u}" for u in users[3:5]}
    stream_row = store.read(PIPELINE_RUNS).where("stage = 'stream'").collect()
    assert [r.status for r in stream_row] == ["success"]
