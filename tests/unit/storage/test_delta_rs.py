"""What only the delta-rs engine does: its own commit of Spark-written files (DESIGN.md §4)."""

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from segmentation.errors import StorageError
from segmentation.storage import DeltaRsStore
from tests.unit.storage.conftest import make_store


@pytest.fixture
def rs(spark, cfg):
    return make_store(spark, cfg, "delta-rs")


def test_a_crash_between_writing_files_and_committing_leaves_the_table_unchanged(
    spark, rs, frame, monkeypatch
):
    rs.overwrite(frame, "t", ["event_date"])
    version = rs.version("t")
    before = sorted(rs.read("t").collect())
    files_before = {p for p in Path(rs.location("t")).rglob("*.parquet")}

    def crash(*args, **kwargs):
        raise OSError("simulated crash between writing files and committing")

    monkeypatch.setattr(DeltaRsStore, "_commit", crash)
    more = frame.withColumn("user_id", F.lit("new"))
    for write in (
        lambda: rs.append(more, "t", ["event_date"]),
        lambda: rs.overwrite(more, "t", ["event_date"]),
        lambda: rs.replace_where(more, "t", "event_date", [r.event_date for r in frame.collect()]),
    ):
        with pytest.raises(StorageError, match="table unchanged"):
            write()
    monkeypatch.undo()
    assert rs.version("t") == version
    assert sorted(rs.read("t").collect()) == before
    # The uncommitted files were cleaned up; no staging directory is left behind either.
    assert {p for p in Path(rs.location("t")).rglob("*.parquet")} == files_before
    assert not [p for p in Path(rs.location("t")).iterdir() if p.name.startswith("_staging")]


def test_file_stats_come_from_parquet_footers(spark, rs, frame):
    rs.overwrite(frame, "t", ["event_date"])
    actions = pa.table(DeltaTable(rs.location("t")).get_add_actions(flatten=True)).to_pydict()
    assert sum(actions["num_records"]) == 3
    first = actions["path"].index(next(p for p in actions["path"] if "2026-09-01" in p))
    assert actions["min.quantity"][first] == 3 and actions["max.quantity"][first] == 3


def test_catalog_tables_need_delta_spark(spark, cfg):
    cfg.storage.catalog, cfg.storage.schema = "main", "segmentation"
    with pytest.raises(StorageError, match="storage.catalog needs the delta-spark engine"):
        make_store(spark, cfg, "delta-rs")
