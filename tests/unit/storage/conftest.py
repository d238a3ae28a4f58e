"""Fixtures for the table layer: a store per engine over one shared Spark session (which has the Delta
jars, so both engines run in it), and small frames holding every column type the product writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from segmentation.storage import DeltaRsStore, DeltaSparkStore, TableStore

UTC = dt.UTC
ENGINES = ("delta-spark", "delta-rs")
SCHEMA = (
    "user_id string, event_time timestamp, event_date date, value double, quantity long, n int, "
    "is_bot boolean, features array<float>, tags map<string,string>"
)


def rows():
    return [
        (
            "u1",
            dt.datetime(2026, 9, 1, 23, 59, 59, 123456, tzinfo=UTC),
            dt.date(2026, 9, 1),
            1.5,
            3,
            7,
            False,
            [0.25, -1.5],
            {"a": "b"},
        ),
        (
            "u2",
            dt.datetime(2026, 9, 2, 0, 0, 1, tzinfo=UTC),
            dt.date(2026, 9, 2),
            None,
            None,
            None,
            True,
            [],
            None,
        ),
        ("u3", dt.datetime(2026, 9, 3, 12, 0, tzinfo=UTC), dt.date(2026, 9, 3), -2.0, 0, 1, None, None, {}),
    ]


def make_store(spark, cfg, engine: str, root=None) -> TableStore:
    storage = replace(cfg.storage, engine=engine, root=str(root) if root else cfg.storage.root)
    return DeltaSparkStore(spark, storage) if engine == "delta-spark" else DeltaRsStore(spark, storage)


@pytest.fixture(params=ENGINES)
def store(request, spark, cfg) -> TableStore:
    return make_store(spark, cfg, request.param)


@pytest.fixture
def frame(spark):
    return spark.createDataFrame(rows(), SCHEMA)
