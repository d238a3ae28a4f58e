"""Each input format through ingest, on small hand-written files."""

import datetime as dt
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segmentation.errors import ConfigError, DataQualityError, StageError
from segmentation.ingest import stage as ingest
from segmentation.ingest.readers import named_groups
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import EVENTS_QUARANTINE, EVENTS_SILVER


def _silver(spark, cfg):
    return open_store(spark, cfg.storage).read(EVENTS_SILVER).orderBy("event_time").collect()


def _reasons(spark, cfg):
    rows = open_store(spark, cfg.storage).read(EVENTS_QUARANTINE).groupBy("reason").count().collect()
    return {r["reason"]: r["count"] for r in rows}


def test_csv_with_header_options_and_compact_dates(spark, cfg):
    cfg.ingest.max_rejected_share = 1.0  # three of its four records are bad on purpose
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    (raw / "export.csv").write_text(
        "customer;day;action;amount\n"
        "c1;20260901;purchase;12,50\n"
        "c2;20260902;view;\n"
        "c3;2026-09-03;view;\n"  # not yyyyMMdd
        "c4;20260904;view;1;extra\n"  # one field too many
    )
    cfg.input.format = "csv"
    cfg.input.options = {"header": True, "sep": ";"}
    cfg.input.mapping = {
        "user_id": "customer",
        "event_time": "day",
        "event_type": "action",
        "value": "amount",
    }
    cfg.input.time_format = "yyyyMMdd"
    result = ingest.run(StageContext.create(spark, cfg, "csv"))
    assert result.rows_in == 4  # records; the header is not one
    # "12,50" is not a number (a decimal comma): the record is quarantined, not kept with a null value
    assert _reasons(spark, cfg) == {"invalid_timestamp": 1, "malformed_record": 1, "invalid_value": 1}
    silver = _silver(spark, cfg)
    assert [(r.user_id, r.event_time.date().isoformat(), r.event_type, r.value) for r in silver] == [
        ("c2", "2026-09-02", "view", None),
    ]


def test_parquet_partition_directories_and_epoch_millis(spark, cfg):
    raw = Path(cfg.input.path)
    for day, offset in (("2026-09-01", 0), ("2026-09-02", 86_400_000)):
        folder = raw / f"day={day}"
        folder.mkdir(parents=True)
        table = pa.table(
            {
                "uid": ["a", "b"],
                "ts_ms": pa.array([1788220800000 + offset, 1788224400000 + offset], pa.int64()),
                "payload": [{"kind": "view"}, {"kind": "search"}],
            }
        )
        pq.write_table(table, folder / "part-0.parquet")
    cfg.input.format = "parquet"
    cfg.input.mapping = {"user_id": "uid", "event_time": "ts_ms", "event_type": "payload.kind"}
    result = ingest.run(StageContext.create(spark, cfg, "parquet"))
    assert (result.rows_in, result.rows_out) == (4, 4)
    silver = _silver(spark, cfg)
    assert silver[0].event_time == dt.datetime(2026, 9, 1, 0, 0)
    assert [r.event_type for r in silver] == ["view", "search", "view", "search"]
    assert {r.source_file.rsplit("/", 2)[-2] for r in silver} == {"day=2026-09-01", "day=2026-09-02"}


def test_regex_text_with_header_and_variable_whitespace(spark, cfg):
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    (raw / "access.log").write_text(
        "TIME USER ACTION\n"
        "2026-09-01T10:00:00Z   u1  view\n"
        "2026-09-01T10:05:00Z\tu1 \t purchase\n"
        "garbage line\n"
    )
    cfg.input.format = "text"
    cfg.input.pattern = r"^(?<event_time>\d{4}-\d\d-\d\dT\S+)\s+(?<user_id>\w+)\s+(?<event_type>\w+)\s*$"
    result = ingest.run(StageContext.create(spark, cfg, "text"))
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (4, 2, 2)
    assert _reasons(spark, cfg) == {"pattern_mismatch": 2}
    assert [r.event_type for r in _silver(spark, cfg)] == ["view", "purchase"]


def test_gzip_json_and_constants(spark, cfg):
    raw = Path(cfg.input.path) / "nested" / "deeper"
    raw.mkdir(parents=True)
    lines = [json.dumps({"user_id": "p", "event_time": 1788220800, "value": 9.5}) for _ in range(1)]
    with gzip.open(raw / "orders.json.gz", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    cfg.input.constants = {"event_type": "purchase", "quantity": 1}
    result = ingest.run(StageContext.create(spark, cfg, "gz"))
    assert result.rows_out == 1
    row = _silver(spark, cfg)[0]
    assert (row.event_type, row.quantity, row.value) == ("purchase", 1, 9.5)


def test_named_groups_are_numbered_as_java_does():
    pattern = r"(\d+)-(?<user_id>[a-z(]+)(?:x)(?<=y)(?<when>\S+)\((?<t>\w)\)"
    groups, plain = named_groups(pattern)
    assert groups == [("user_id", 2), ("when", 3), ("t", 4)]
    assert plain == r"(\d+)-([a-z(]+)(?:x)(?<=y)(\S+)\((\w)\)"


def test_bad_pattern_is_a_config_error(spark, cfg):
    Path(cfg.input.path).mkdir(parents=True)
    (Path(cfg.input.path) / "x.log").write_text("a\n")
    cfg.input.format = "text"
    cfg.input.pattern = r"(?<user_id>\w+"
    with pytest.raises(ConfigError, match="input.pattern is not a valid Java regular expression") as bad:
        ingest.run(StageContext.create(spark, cfg, "bad"))
    assert "\n" not in str(bad.value)


def test_java_regex_syntax_python_lacks_is_accepted(spark, cfg):
    """The README promises Java regex: Unicode classes (\\p{L}) and possessive quantifiers work."""
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    (raw / "x.log").write_text("2026-09-01T10:00:00Z José view\n")
    cfg.input.format = "text"
    cfg.input.pattern = r"^(?<event_time>\S++)\s+(?<user_id>\p{L}+)\s+(?<event_type>\p{Alpha}+)$"
    result = ingest.run(StageContext.create(spark, cfg, "java"))
    assert result.rows_out == 1 and _silver(spark, cfg)[0].user_id == "José"


def test_an_empty_input_directory_is_an_error_not_nothing_to_do(spark, cfg):
    Path(cfg.input.path).mkdir(parents=True)
    with pytest.raises(StageError, match="holds no input files"):
        ingest.run(StageContext.create(spark, cfg, "empty"))
    assert not open_store(spark, cfg.storage).exists(EVENTS_SILVER)


# ---------------------------------------------------------------- real-world shapes (epoch text, expressions)

RATINGS = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"


def _ratings_tsv(cfg, **time):
    """A MovieLens-style ratings file: tab-separated, epoch seconds as text, no header."""
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "u.data").write_text(RATINGS)
    cfg.input.format = "csv"
    cfg.input.options = {"sep": "\t", "header": False}
    cfg.input.mapping = {"user_id": "_c0", "item_id": "_c1", "value": "_c2", "event_time": "_c3"}
    cfg.input.constants = {"event_type": "rate"}
    for key, value in time.items():
        setattr(cfg.input, key, value)


@pytest.mark.parametrize("time_format", [None, "epoch_s"])
def test_epoch_seconds_as_text(spark, cfg, time_format, caplog):
    _ratings_tsv(cfg, time_format=time_format)
    with caplog.at_level("INFO"):
        result = ingest.run(StageContext.create(spark, cfg, "ratings"))
    assert (result.rows_in, result.rows_out) == (3, 3)
    times = sorted(r.event_time for r in _silver(spark, cfg))
    assert times[0] == dt.datetime.fromtimestamp(878887116, dt.UTC).replace(tzinfo=None)
    if time_format is None:
        assert "read as epoch_s" in caplog.text


def test_epoch_milliseconds_as_text_and_numbers(spark, cfg):
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    lines = [
        {"user_id": "a", "ts": "1788220800123", "event_type": "view"},
        {"user_id": "b", "ts": "1788220800", "event_type": "view"},  # seconds under epoch_ms: 1970
    ]
    (raw / "e.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg.input.mapping = {"event_time": "ts"}
    cfg.input.time_format = "epoch_ms"
    cfg.ingest.max_rejected_share = 1.0
    ingest.run(StageContext.create(spark, cfg, "ms"))
    got = {r.user_id: r.event_time for r in _silver(spark, cfg)}
    assert got["a"] == dt.datetime(2026, 9, 1, 0, 0, 0, 123000)


def test_a_mostly_rejected_batch_commits_nothing_and_says_why(spark, cfg):
    _ratings_tsv(cfg, time_format="yyyy-MM-dd")  # the wrong format: every record would be rejected
    with pytest.raises(DataQualityError) as refused:
        ingest.run(StageContext.create(spark, cfg, "wrong-format"))
    message = str(refused.value)
    assert message.startswith("ingest: 3 of 3 records rejected as invalid_timestamp")
    assert "sample '881250949' in column _c3:string" in message and "\n" not in message
    assert "nothing was committed" in message
    store = open_store(spark, cfg.storage)
    assert not any(store.exists(t) for t in ("events_silver", "events_bronze", "events_quarantine"))


def test_expressions_derive_fields_from_source_columns(spark, cfg):
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    lines = [
        {"cust": 7, "Quantity": 3, "UnitPrice": 2.5, "d": "2026-09-01", "t": "10:00", "line": {"sku": "x"}},
        {"cust": 7, "Quantity": -1, "UnitPrice": 2.5, "d": "2026-09-01", "t": "11:00", "line": {"sku": "y"}},
    ]
    (raw / "retail.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg.input.mapping = {"user_id": "cust"}
    cfg.input.expressions = {
        "value": "Quantity * UnitPrice",  # negative for the return line: kept, as a positive amount
        "event_type": "CASE WHEN Quantity < 0 THEN 'return' ELSE 'purchase' END",
        "quantity": "Quantity",
        "event_time": "to_timestamp(concat(d, ' ', t), 'yyyy-MM-dd HH:mm')",
        "item_id": "line.sku",
    }
    ingest.run(StageContext.create(spark, cfg, "expr"))
    got = sorted(
        (r.item_id, r.event_type, r.value, r.quantity, r.event_time.hour) for r in _silver(spark, cfg)
    )
    assert got == [("x", "purchase", 7.5, 3, 10), ("y", "return", 2.5, 1, 11)]


@pytest.mark.parametrize(
    ("expression", "said"),
    [("Quantity * NoSuchColumn", "NoSuchColumn"), ("Quantity *", "input.expressions.value")],
)
def test_a_bad_expression_is_a_config_error_naming_the_key(spark, cfg, expression, said):
    raw = Path(cfg.input.path)
    raw.mkdir(parents=True)
    (raw / "e.json").write_text(
        json.dumps({"user_id": "a", "event_time": "2026-09-01T10:00:00Z", "Quantity": 1}) + "\n"
    )
    cfg.input.expressions = {"value": expression}
    with pytest.raises(ConfigError, match=r"^input\.expressions\.value: ") as bad:
        ingest.run(StageContext.create(spark, cfg, "bad-expr"))
    assert said in str(bad.value)


def test_a_field_comes_from_one_source():
    from segmentation.config import load_config

    with pytest.raises(ConfigError, match=r"input\.expressions\.value' is also set in input\.mapping"):
        load_config([], ["input.mapping.value=Amount", "input.expressions.value=Quantity * 2"])
