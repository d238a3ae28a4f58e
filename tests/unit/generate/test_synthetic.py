import json

import pytest
from pyspark.sql import functions as F

from segmentation.errors import ConfigError
from segmentation.tools import generate
from segmentation.tools.generate.synthetic import FUTURE_YEAR, PROFILES, generate_logs


def test_generation_is_deterministic_and_plants_what_it_says(spark, cfg):
    cfg.generate.users = 400
    cfg.generate.bot_users = 2
    cfg.generate.dirty_share = 0.05
    first = generate_logs(spark, cfg.generate)
    second = generate_logs(spark, cfg.generate)
    assert first.exceptAll(second).count() == 0 and second.exceptAll(first).count() == 0

    truth = [json.loads(r.value) for r in first.where("kind = 'truth'").collect()]
    assert len(truth) == 402
    assert {t["segment"] for t in truth if not t["is_bot"]} == {p.name for p in PROFILES}
    assert sum(t["is_bot"] for t in truth) == 2

    events = first.where("kind = 'event'")
    parsed = events.select(
        F.from_json("value", "user_id string, event_time string, event_type string, value double").alias("e")
    )
    malformed = events.where(F.get_json_object("value", "$.event_time").isNull()).count()
    assert malformed > 0
    assert parsed.where("e.value < 0").count() > 0
    assert (
        parsed.where(
            "e.event_type = 'hover' OR e.event_type = 'scroll' OR e.event_type = 'wishlist_zap'"
        ).count()
        > 0
    )
    assert parsed.where(f"e.event_time LIKE '{FUTURE_YEAR}-%'").count() > 0
    assert events.groupBy("value").count().where("count > 1").count() > 0  # exact duplicates


def test_run_writes_logs_and_truth_beside_them(spark, cfg):
    cfg.generate.users = 50
    result = generate.run(spark, cfg)
    assert result.raw_lines == spark.read.text(cfg.input.path).count() > 50
    assert spark.read.json(str(cfg.paths.truth)).count() == 50 + cfg.generate.bot_users


def test_run_replaces_only_what_it_wrote_before(spark, cfg, tmp_path):
    cfg.generate.users = 20
    generate.run(spark, cfg)
    generate.run(spark, cfg)  # its own output: replaced without asking
    raw = tmp_path / "raw"
    (raw / "_SEGMENT_GENERATED").unlink()  # as if the data were someone else's
    (raw / "theirs.json").write_text("{}\n")
    with pytest.raises(ConfigError, match="input.path.*did not write.*--force"):
        generate.run(spark, cfg)
    assert (raw / "theirs.json").is_file()  # nothing deleted
    generate.run(spark, cfg, force=True)
    assert (raw / "_SEGMENT_GENERATED").is_file() and not (raw / "theirs.json").exists()


@pytest.mark.parametrize("where", ["working directory", "parent of the lake"])
def test_run_never_writes_over_the_working_directory_or_the_lake(spark, cfg, tmp_path, monkeypatch, where):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.chdir(home)
    cfg.input.path = str(home) if where == "working directory" else str(tmp_path / "lake" / "..")
    with pytest.raises(ConfigError, match="config key 'input.path'.*never writes there"):
        generate.run(spark, cfg, force=True)  # not even when forced
    assert (home / "notes.txt").read_text() == "mine"
