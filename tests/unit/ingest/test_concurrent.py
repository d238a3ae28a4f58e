"""Two ingests into one lake at once, on both engines: another ingest commits to silver between this
run's read and its commit (or between its silver commit and its ledger). No event is lost or doubled,
and a run that fails says truly that nothing of it landed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.errors import ConcurrentWriteError
from segmentation.ingest import stage as ingest
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import EVENTS_BRONZE, EVENTS_QUARANTINE, EVENTS_SILVER
from tests.conftest import make_config

ENGINES = ("delta-spark", "delta-rs")


def write_feed(directory: Path, prefix: str, users: int, per_user: int, day: str = "2026-09-01") -> int:
    """One JSON-lines file of `users` × `per_user` events on `day` (plus one record to quarantine)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "user_id": f"{prefix}{u}",
                "event_time": f"{day}T{10 + e // 60:02d}:{e % 60:02d}:00Z",
                "event_type": "view",
            }
        )
        for u in range(users)
        for e in range(per_user)
    ]
    lines.append(json.dumps({"user_id": f"{prefix}x", "event_time": "never", "event_type": "view"}))
    (directory / f"{prefix}.json").write_text("\n".join(lines) + "\n")
    return users * per_user


@dataclass
class Feeds:
    root: Path
    engine: str
    expected: dict[str, int]  # feed prefix -> events it must leave in silver

    def cfg(self, feed: str):
        return make_config(
            self.root,
            f"input.path={self.root / ('raw_' + feed)}",
            f"storage.engine={self.engine}",
            "ingest.mode=incremental",
        )

    def ingest(self, spark, feed: str, run_id: str | None = None):
        return ingest.run(StageContext.create(spark, self.cfg(feed), run_id or f"run-{feed}"))

    def store(self, spark):
        return open_store(spark, self.cfg("a").storage)

    def assert_exactly(self, spark, feeds: str) -> None:
        """Silver holds each event of `feeds` once and nothing else; the ledger each file once;
        quarantine each feed's bad record once."""
        store = self.store(spark)
        silver = store.read(EVENTS_SILVER)
        by_feed = {
            r.feed: r["count"]
            for r in silver.groupBy(F.substring("user_id", 1, 1).alias("feed")).count().collect()
        }
        assert by_feed == {f: self.expected[f] for f in feeds}
        assert silver.select("event_id").distinct().count() == silver.count()
        bronze = store.read(EVENTS_BRONZE)
        files = {
            r.source_file.rsplit("/", 1)[-1]: r["count"]
            for r in bronze.groupBy("source_file").count().collect()
        }
        assert files == {f"{f}.json": self.expected[f] + 1 for f in feeds}
        quarantined = store.read(EVENTS_QUARANTINE).groupBy("source_file").count().collect()
        assert sorted(r["count"] for r in quarantined) == [1] * len(feeds)


@pytest.fixture(params=ENGINES)
def feeds(request, tmp_path) -> Feeds:
    expected = {
        "a": write_feed(tmp_path / "raw_a", "a", users=5, per_user=10),
        "b": write_feed(tmp_path / "raw_b", "b", users=40, per_user=20),
        "c": write_feed(tmp_path / "raw_c", "c", users=3, per_user=4, day="2026-08-31"),
    }
    return Feeds(tmp_path, request.param, expected)


def run_first_at(monkeypatch, step: str, other) -> None:
    """The next ingest runs `other` (a whole ingest) when it reaches `step`, then goes on."""
    real = getattr(ingest, step)
    fired: list[bool] = []

    def interleaved(*args, **kwargs):
        if not fired:
            fired.append(True)
            other()
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, step, interleaved)


def assert_nothing_of_a_landed(spark, feeds: Feeds, error: ConcurrentWriteError) -> None:
    message = str(error)
    assert "another ingest committed to events_silver" in message
    assert "nothing of this run landed" in message and "\n" not in message
    store = feeds.store(spark)
    assert store.read(EVENTS_SILVER).where(F.col("user_id").startswith("a")).count() == 0
    for table in (EVENTS_BRONZE, EVENTS_QUARANTINE):
        assert store.read(table).where(F.col("source_file").endswith("/a.json")).count() == 0


def test_first_ingests_racing_into_an_empty_lake(spark, feeds, monkeypatch):
    run_first_at(monkeypatch, "_reconcile", lambda: feeds.ingest(spark, "b"))
    with pytest.raises(ConcurrentWriteError) as failed:
        feeds.ingest(spark, "a")
    assert_nothing_of_a_landed(spark, feeds, failed.value)
    monkeypatch.undo()
    again = feeds.ingest(spark, "a", "run-a-again")
    assert (again.rows_in, again.rows_out, again.rows_quarantined) == (51, 50, 1)
    feeds.assert_exactly(spark, "ab")


def test_another_ingest_commits_between_read_and_commit(spark, feeds, monkeypatch):
    feeds.ingest(spark, "c")
    # b: 800 events on the same day as a's 50, the lost update: a read silver before b
    # committed and must not replace b's partition with its own view of it.
    run_first_at(monkeypatch, "_reconcile", lambda: feeds.ingest(spark, "b"))
    with pytest.raises(ConcurrentWriteError) as failed:
        feeds.ingest(spark, "a")
    assert_nothing_of_a_landed(spark, feeds, failed.value)
    feeds.assert_exactly(spark, "bc")
    monkeypatch.undo()
    feeds.ingest(spark, "a", "run-a-again")
    feeds.assert_exactly(spark, "abc")
    assert feeds.ingest(spark, "a", "run-a-third").rows_in == 0  # its file is in the ledger once


def test_another_ingest_commits_between_silver_and_ledger(spark, feeds, monkeypatch):
    feeds.ingest(spark, "c")
    run_first_at(monkeypatch, "_write_rejected_and_bronze", lambda: feeds.ingest(spark, "b"))
    result = feeds.ingest(spark, "a")  # a's silver commit came first: b read it and merged on top
    assert (result.rows_in, result.rows_out) == (51, 50)
    feeds.assert_exactly(spark, "abc")
