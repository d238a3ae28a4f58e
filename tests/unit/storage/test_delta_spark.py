"""What only the delta-spark engine does: detection, the session's jars, deletion vectors written by
another writer (DESIGN.md §4)."""

import subprocess
import sys
from pathlib import Path

import pytest

from segmentation.errors import StorageError
from segmentation.spark import delta_jars
from segmentation.storage import DeltaSparkStore, open_store
from segmentation.storage.delta_spark import delta_spark_available
from tests.conftest import REPO
from tests.unit.storage.conftest import make_store


def test_setup_installed_the_checked_jars_and_auto_takes_delta_spark(spark, cfg):
    names = sorted(Path(j).name for j in delta_jars())
    assert names == ["delta-spark_2.13-4.0.1.jar", "delta-storage-4.0.1.jar"]
    assert delta_spark_available(spark)
    assert isinstance(open_store(spark, cfg.storage), DeltaSparkStore)
    # Delta's classes and catalog are what make a session Delta's.
    state = spark._jsparkSession.sessionState()
    assert state.catalogManager().v2SessionCatalog().getClass().getName().endswith("DeltaCatalog")


@pytest.mark.spark
def test_naming_the_extension_without_the_jars_is_not_delta(tmp_path):
    # A session built without the jars (storage.engine: delta-rs) whose spark.sql.extensions still names
    # Delta's extension: detection must not believe the text, and the engine says how to add the jars.
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.conftest import make_config
from segmentation.spark import get_spark
from segmentation.storage import DeltaSparkStore, open_store
from segmentation.storage.delta_spark import delta_spark_available
cfg = make_config(__import__("pathlib").Path({str(tmp_path)!r}), "storage.engine=delta-rs",
                  "spark.conf={{spark.sql.extensions: io.delta.sql.DeltaSparkSessionExtension}}")
spark = get_spark(cfg)
print("available", delta_spark_available(spark))
print("auto", type(open_store(spark, cfg.storage.__class__(root=cfg.storage.root))).__name__)
try:
    DeltaSparkStore(spark, cfg.storage)
except Exception as exc:
    print("error", exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "available False" in proc.stdout
    assert "auto DeltaRsStore" in proc.stdout
    assert (
        "jars are not loaded" in proc.stdout and "--packages io.delta:delta-spark_2.13:4.0.1" in proc.stdout
    )


@pytest.fixture
def dv_table(spark, cfg):
    """A table another writer changed with deletion vectors (a DELETE with them enabled)."""
    store = make_store(spark, cfg, "delta-spark")
    path = store.location("dv")
    spark.range(100).repartition(2).write.format("delta").option("delta.enableDeletionVectors", "true").save(
        path
    )
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id % 10 = 0")
    return store


def test_deletion_vectors_are_refused_for_direct_file_readers_and_purged_by_maintenance(spark, cfg, dv_table):
    rs = make_store(spark, cfg, "delta-rs")
    assert dv_table.read("dv").count() == 90  # Spark's Delta reader applies them
    with pytest.raises(StorageError, match="deletion vectors.*segment maintain"):
        dv_table.snapshot("dv")
    with pytest.raises(StorageError, match="deletion vectors"):
        rs.read("dv")  # delta-rs's read hands files to Spark's parquet reader: refused, not resurrected
    with pytest.raises(StorageError, match="deletion vectors"):
        rs.snapshot("dv")
    assert dv_table.purge_deletion_vectors("dv") == 2
    snapshot = dv_table.snapshot("dv")
    assert snapshot.rows == 90 and spark.read.parquet(*snapshot.files).count() == 90
    assert rs.read("dv").count() == 90
    assert dv_table.properties("dv")["delta.enableDeletionVectors"] == "false"
    assert dv_table.purge_deletion_vectors("dv") == 0


def test_relative_roots_name_absolute_locations(spark, cfg, monkeypatch, tmp_path):
    # A relative storage.root (./data/lake in conf/local.yaml) must not resolve against Spark's
    # warehouse directory when `segment sql` registers the tables in the session catalog.
    monkeypatch.chdir(tmp_path)
    cfg.storage.root = "./lake"
    store = make_store(spark, cfg, "delta-spark")
    assert store.location("user_segments") == str(tmp_path / "lake" / "user_segments")
    store.overwrite(spark.range(3), "user_segments")
    assert store.register_views() == ["user_segments"]
    assert spark.sql("SELECT count(*) AS n FROM user_segments VERSION AS OF 0").head().n == 3
    assert spark.sql("DESCRIBE HISTORY user_segments").count() == 1


def test_without_the_log_classes_the_snapshot_comes_from_the_reader_and_refuses_when_unsure(
    spark, cfg, dv_table, monkeypatch, frame
):
    store = make_store(spark, cfg, "delta-spark")
    store.overwrite(frame, "t", ["event_date"])
    expected = store.snapshot("t")

    def unreachable(self, name):
        raise TypeError("'JavaPackage' object is not callable")  # what py4j says for a missing class

    monkeypatch.setattr(DeltaSparkStore, "_jsnapshot", unreachable)
    fallback = store.snapshot("t")
    assert (fallback.version, fallback.files, fallback.rows) == (expected.version, expected.files, 3)
    with pytest.raises(StorageError, match="may carry deletion vectors"):
        dv_table.snapshot("dv")
