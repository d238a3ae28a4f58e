"""Failures in one line: a Java exception from Spark is reduced to its root cause and the file."""

import gzip

import pytest

from segmentation.errors import one_line


def test_a_java_failure_names_its_root_cause_and_file(spark, tmp_path):
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"this is not gzip data at all")
    with pytest.raises(Exception) as caught:  # noqa: PT011 - py4j's own error type is the subject
        spark.read.json(str(bad)).collect()
    assert "An error occurred while calling" in str(caught.value)  # what py4j says by itself
    line = one_line(caught.value)
    assert line.startswith("IOException: not a gzip file")
    assert "bad.json.gz" in line and "\n" not in line


def test_parquet_that_is_not_names_the_file(spark, tmp_path):
    fake = tmp_path / "data.parquet"
    fake.write_bytes(gzip.compress(b"user_id,event_time\nu1,2026-09-01\n"))
    with pytest.raises(Exception) as caught:  # noqa: PT011
        spark.read.parquet(str(fake)).collect()
    line = one_line(caught.value)
    assert "data.parquet" in line and "\n" not in line


def test_other_errors_keep_type_and_first_line():
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
