"""Ingest on a handful of hand-written JSON lines: every record kept, quarantined or a duplicate."""

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.errors import ConfigError, InputError
from segmentation.ingest import stage as ingest
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import EVENTS_BRONZE, EVENTS_QUARANTINE, EVENTS_SILVER

GOOD = {
    "user_id": "a",
    "event_time": "2026-09-01T10:00:00+02:00",
    "event_type": "view",
    "category": " Books ",
}
LINES = [
    json.dumps(GOOD),
    json.dumps(GOOD),  # exact duplicate
    json.dumps({**GOOD, "event_time": "2026-09-01T10:20:00+02:00", "event_type": "add_to_cart", "value": 5}),
    json.dumps({**GOOD, "event_time": "2026-09-01T12:00:00+02:00", "event_type": "PURCHASE", "value": 5}),
    '{"user_id": "a", "event_time": ',  # malformed
    "",  # blank line: a record too
    json.dumps({**GOOD, "user_id": None}),
    json.dumps({**GOOD, "user_id": "  "}),
    json.dumps({**GOOD, "event_time": "not a time"}),
    json.dumps({**GOOD, "event_time": f"{dt.date.today().year + 5}-01-01T00:00:00Z"}),
    json.dumps({**GOOD, "event_type": "hover"}),
    json.dumps({**GOOD, "event_type": "purchase", "value": -3}),
]


def _ingest(spark, cfg, lines, name="events.json", mode="full"):
    """Write `lines` as one file and ingest. Full mode by default: these tests rewrite one file, which
    incremental ingest (files are known by name) would rightly skip."""
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / name).write_text("\n".join(lines) + "\n")
    cfg.ingest.mode = mode
    cfg.ingest.max_rejected_share = 1.0  # these batches are mostly bad records on purpose
    return ingest.run(StageContext.create(spark, cfg, f"run-{name}"))


def test_every_record_is_accounted_for(spark, cfg):
    result = _ingest(spark, cfg, LINES)
    assert result.rows_in == len(LINES)
    assert result.rows_duplicate == 1
    assert result.rows_out == 3
    assert result.quarantined_by_reason == {
        "malformed_record": 2,
        "missing_user_id": 2,
        "invalid_timestamp": 1,
        "future_timestamp": 1,
        "unknown_event_type": 1,
        "negative_value": 1,
    }
    store = open_store(spark, cfg.storage)
    quarantined = store.read(EVENTS_QUARANTINE)
    assert quarantined.where(F.col("raw_record").isNull() | F.col("source_file").isNull()).count() == 0

    silver = store.read(EVENTS_SILVER).orderBy("event_time").collect()
    assert [r.event_type for r in silver] == ["view", "cart", "purchase"]
    assert silver[0].event_time.hour == 8  # 10:00+02:00 is 08:00 UTC
    assert silver[0].category == "books"
    # 10:00 and 10:20 share a session; 12:00 comes after a 100-minute gap.
    assert silver[0].session_id == silver[1].session_id != silver[2].session_id
    assert len({r.event_id for r in silver}) == 3


def test_ingest_twice_changes_nothing(spark, cfg):
    _ingest(spark, cfg, LINES)
    store = open_store(spark, cfg.storage)
    first = sorted(store.read(EVENTS_SILVER).drop("run_id").collect())
    _ingest(spark, cfg, LINES)
    assert sorted(store.read(EVENTS_SILVER).drop("run_id").collect()) == first


def test_unknown_event_types_can_be_kept_as_other(spark, cfg):
    cfg.input.unknown_event_type = "other"
    result = _ingest(spark, cfg, LINES)
    assert "unknown_event_type" not in result.quarantined_by_reason
    silver = open_store(spark, cfg.storage).read(EVENTS_SILVER)
    assert silver.where("event_type = 'other'").count() == 1


def test_mapping_reads_nested_fields_and_names_missing_ones(spark, cfg):
    nested = [json.dumps({"who": {"id": "z"}, "ts": 1788220800, "kind": "view"})]
    cfg.input.mapping = {"user_id": "who.id", "event_time": "ts", "event_type": "kind"}
    result = _ingest(spark, cfg, nested)
    assert result.rows_out == 1
    row = open_store(spark, cfg.storage).read(EVENTS_SILVER).head()
    assert (row.user_id, row.event_time.isoformat()[:10]) == ("z", "2026-09-01")
    cfg.input.mapping = {"user_id": "who.name"}
    with pytest.raises(ConfigError, match=r"input.mapping.user_id names 'who.name'"):
        _ingest(spark, cfg, nested)


def test_rules_can_warn_fail_or_be_added(spark, cfg):
    from segmentation.config import RuleConfig
    from segmentation.errors import DataQualityError

    cfg.ingest.rule_actions = {"negative_value": "warn"}
    cfg.ingest.rules = [RuleConfig("books_only", "category = 'books' OR category IS NULL", "quarantine")]
    lines = [*LINES, json.dumps({**GOOD, "category": "toys", "event_time": "2026-09-02T10:00:00Z"})]
    result = _ingest(spark, cfg, lines)
    assert "negative_value" not in result.quarantined_by_reason
    assert result.warnings_by_rule == {"negative_value": 1}
    assert result.quarantined_by_reason["books_only"] == 1

    cfg.ingest.rule_actions = {"future_timestamp": "fail"}
    store = open_store(spark, cfg.storage)
    version = store.version(EVENTS_SILVER)
    with pytest.raises(DataQualityError, match="future_timestamp broken by 1 records"):
        _ingest(spark, cfg, LINES)
    assert store.version(EVENTS_SILVER) == version  # nothing written


def test_unknown_rule_action_names_the_key(spark, cfg):
    cfg.ingest.rule_actions = {"no_such_rule": "warn"}
    with pytest.raises(ConfigError, match="ingest.rule_actions.no_such_rule"):
        _ingest(spark, cfg, LINES)


def test_pseudonymization_is_keyed_and_deterministic(spark, cfg, monkeypatch):
    from segmentation.privacy import pseudonym

    cfg.privacy.pseudonymize = True
    cfg.privacy.pii_fields = ["category"]
    monkeypatch.setenv(cfg.privacy.key_env, "k" * 32)
    _ingest(spark, cfg, LINES)
    silver = open_store(spark, cfg.storage).read(EVENTS_SILVER)
    ids = {r.user_id for r in silver.collect()}
    assert ids == {pseudonym("a", b"k" * 32)}
    assert silver.where("category IS NOT NULL").count() == 0
    monkeypatch.setenv(cfg.privacy.key_env, "other-key-of-some-length")
    _ingest(spark, cfg, LINES)
    other = {r.user_id for r in open_store(spark, cfg.storage).read(EVENTS_SILVER).collect()}
    assert other != ids and len(other) == 1
    monkeypatch.delenv(cfg.privacy.key_env)
    with pytest.raises(ConfigError, match=f"environment variable {cfg.privacy.key_env} is not set"):
        _ingest(spark, cfg, LINES)


def test_bots_are_flagged_and_kept_out_of_features(spark, cfg):
    from segmentation.features import stage as features
    from segmentation.tables import USER_FEATURES

    burst = [
        json.dumps({"user_id": "bot", "event_time": f"2026-09-01T10:00:{s:02d}Z", "event_type": "view"})
        for s in range(40)
    ]
    other_human = [
        json.dumps({"user_id": "b", "event_time": f"2026-09-0{d}T12:00:00Z", "event_type": "search"})
        for d in (1, 3)
    ]
    cfg.ingest.bot_max_events_per_minute = 30
    result = _ingest(spark, cfg, LINES + burst + other_human)
    assert result.bot_users == 1
    silver = open_store(spark, cfg.storage).read(EVENTS_SILVER)
    assert {
        (r.user_id, r.bot_reason)
        for r in silver.where("is_bot").select("user_id", "bot_reason").distinct().collect()
    } == {("bot", "events_per_minute>30")}
    features.run(StageContext.create(spark, cfg, "features"))
    users = {r.user_id for r in open_store(spark, cfg.storage).read(USER_FEATURES).collect()}
    assert users == {"a", "b"}


def _event(user, when, kind="view", **extra):
    return json.dumps({"user_id": user, "event_time": when, "event_type": kind, **extra})


DAY1 = [
    _event("a", "2026-09-01T10:00:00Z"),
    _event("a", "2026-09-01T23:50:00Z"),
    _event("b", "2026-09-01T12:00:00Z"),
]
DAY2 = [
    _event("a", "2026-09-02T00:10:00Z"),  # continues a's session from 23:50 the day before
    _event("b", "2026-09-02T09:00:00Z"),
    DAY1[2],  # already ingested: a duplicate across batches
    "{broken",
]


def test_incremental_ingest_adds_only_new_files(spark, cfg):
    first = _ingest(spark, cfg, DAY1, "day1.json", mode="incremental")
    assert (first.rows_in, first.rows_out) == (3, 3)
    second = _ingest(spark, cfg, DAY2, "day2.json", mode="incremental")
    assert second.incremental and second.new_files == 1
    assert (second.rows_in, second.rows_out, second.rows_quarantined, second.rows_duplicate) == (4, 2, 1, 1)
    store = open_store(spark, cfg.storage)
    silver = store.read(EVENTS_SILVER).orderBy("event_time").collect()
    assert len(silver) == 5
    a = [r for r in silver if r.user_id == "a"]
    assert a[1].session_id == a[2].session_id != a[0].session_id  # the midnight session is whole
    assert store.read(EVENTS_BRONZE).count() == 7

    version = store.version(EVENTS_SILVER)
    again = _ingest(spark, cfg, DAY2, "day2.json", mode="incremental")
    assert again.rows_in == 0 and again.new_files == 0
    assert store.version(EVENTS_SILVER) == version


def test_crash_before_the_ledger_is_redone_without_duplicates(spark, cfg, monkeypatch):
    engine = type(open_store(spark, cfg.storage))  # delta-spark by default

    _ingest(spark, cfg, DAY1, "day1.json", mode="incremental")
    real_append = engine.append

    def crash_on_bronze(self, df, name, *args, **kwargs):
        if name == EVENTS_BRONZE:
            raise OSError("simulated crash before the bronze ledger is written")
        return real_append(self, df, name, *args, **kwargs)

    monkeypatch.setattr(engine, "append", crash_on_bronze)
    with pytest.raises(OSError):
        _ingest(spark, cfg, DAY2, "day2.json", mode="incremental")
    monkeypatch.undo()
    redo = _ingest(spark, cfg, DAY2, "day2.json", mode="incremental")
    assert redo.rows_in == 4 and redo.rows_in == redo.rows_out + redo.rows_quarantined + redo.rows_duplicate
    store = open_store(spark, cfg.storage)
    assert store.read(EVENTS_SILVER).count() == 5
    assert store.read(EVENTS_QUARANTINE).count() == 1


def test_poison_records_are_quarantined_not_fatal(spark, cfg):
    """Each record that is not an event gets its reason; the batch goes on; an empty file is
    recorded as ingested, so the next run has nothing to do."""
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "empty.json").write_bytes(b"")
    good = _event("u1", "2026-09-01T10:00:00Z")
    lines = [
        good.encode(),
        b'{"user_id": "u\xe9", "event_time": "2026-09-01T11:00:00Z", "event_type": "view"}',  # Latin-1
        b'{"user_id": "u2", "event_time": "2026-09-01T11:00:00Z", "event_type": "view", "user_id": "u3"}',
        _event(["x"], "2026-09-01T12:00:00Z").encode(),
        _event(True, "2026-09-01T12:00:00Z").encode(),
        _event("u5", "2026-09-01T12:00:00Z", None).encode(),
        _event("u6", "2026-09-01T12:00:00Z", "purchase", value="abc").encode(),
        _event("u7", "2026-09-01T12:00:00Z", "purchase", value="12.5", quantity="NaN").encode(),
        _event("u8", "2026-09-01T12:00:00Z", "purchase", value="12.5").encode(),
    ]
    (raw / "poison.json").write_bytes(b"\n".join(lines) + b"\n")
    cfg.ingest.mode = "incremental"
    cfg.ingest.max_rejected_share = 1.0
    result = ingest.run(StageContext.create(spark, cfg, "poison"))
    assert result.quarantined_by_reason == {
        "invalid_encoding": 1,
        "malformed_record": 1,
        "invalid_user_id": 2,
        "missing_event_type": 1,
        "invalid_value": 2,
    }
    assert (result.rows_in, result.rows_out, result.new_files) == (9, 2, 2)
    store = open_store(spark, cfg.storage)
    silver = store.read(EVENTS_SILVER)
    assert sorted((r.user_id, r.value) for r in silver.collect()) == [("u1", None), ("u8", 12.5)]
    # every table stays valid UTF-8: the undecodable byte is kept as U+FFFD in quarantine
    bad = store.read(EVENTS_QUARANTINE).where("reason = 'invalid_encoding'").head()
    assert "u\ufffd" in bad.raw_record
    again = ingest.run(StageContext.create(spark, cfg, "poison-again"))
    assert again.rows_in == 0 and again.files_seen_before == 2


def test_input_with_no_json_object_is_an_error_naming_the_file(spark, cfg):
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "notes.json").write_text("this is\nnot json\n")
    with pytest.raises(InputError, match=r"no line of .*notes\.json is a JSON object"):
        ingest.run(StageContext.create(spark, cfg, "no-json"))


def test_no_raw_id_or_withheld_field_lands_in_any_table(spark, cfg, monkeypatch):
    """Pseudonymized: bronze and quarantine keep the record with its id pseudonymized and withheld
    fields removed (unparseable ones keep no text); the lake remembers its mode."""
    from segmentation.privacy import pseudonym

    key = b"s" * 32
    cfg.privacy.pseudonymize = True
    cfg.privacy.pii_fields = ["category"]
    monkeypatch.setenv(cfg.privacy.key_env, key.decode())
    secret = "alice@example.com"
    lines = [line.replace('"a"', f'"{secret}"').replace("Books", "SECRETCAT") for line in LINES]
    _ingest(spark, cfg, lines, mode="incremental")
    store = open_store(spark, cfg.storage)
    for table in (EVENTS_BRONZE, EVENTS_QUARANTINE, EVENTS_SILVER):
        frame = store.read(table)
        text = " ".join(str(v) for row in frame.collect() for v in row)
        assert secret not in text and "SECRETCAT" not in text.upper(), table
        assert store.properties(table)["segment.privacy.pseudonymize"] == "true"
    bronze = [json.loads(r.raw_record) for r in store.read(EVENTS_BRONZE).collect() if r.raw_record]
    ids = {b["user_id"] for b in bronze if b.get("user_id") is not None}
    assert pseudonym(secret, key) in ids and all(re.fullmatch("[0-9a-f]{64}", i) for i in ids)
    assert all("category" not in b for b in bronze)
    malformed = store.read(EVENTS_QUARANTINE).where("reason = 'malformed_record'").collect()
    assert malformed and all(r.raw_record is None for r in malformed)

    cfg.privacy.pseudonymize = False
    (Path(cfg.input.path) / "later.json").write_text(_event("bob", "2026-09-02T10:00:00Z") + "\n")
    with pytest.raises(ConfigError, match="privacy.pseudonymize is false but this lake's events_silver"):
        ingest.run(StageContext.create(spark, cfg, "raw-ids-later"))
    assert store.read(EVENTS_SILVER).where("user_id = 'bob'").count() == 0
