"""SQL literals that predicates (replaceWhere, MERGE conditions, drift's bins) are written with:
each value Spark reads back is the value written, with its type."""

import datetime as dt
import math

import pytest

from segmentation.storage.base import sql_literal

pytestmark = pytest.mark.spark

VALUES = [
    0.1,  # a decimal literal unless marked double
    1e300,
    -5e-324,
    math.inf,
    -math.inf,
    7,
    True,
    dt.date(2026, 2, 28),
    "it's a \\ test",
    None,
]


def test_every_literal_reads_back_as_the_value_written(spark):
    row = spark.sql("SELECT " + ", ".join(f"{sql_literal(v)} AS c{i}" for i, v in enumerate(VALUES))).first()
    assert list(row) == VALUES
    assert dict(spark.sql(f"SELECT {sql_literal(0.1)} AS x").dtypes)["x"] == "double"


def test_nan_reads_back_as_nan(spark):
    assert math.isnan(spark.sql(f"SELECT {sql_literal(math.nan)} AS x").first().x)
