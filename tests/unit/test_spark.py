from segmentation.spark import REQUIRED_SQL_CONF, get_spark, local_cores
from tests.conftest import make_config


def test_local_session_suits_a_small_machine(spark):
    for key, value in REQUIRED_SQL_CONF.items():
        assert spark.conf.get(key) == value
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    # sized to the master's cores (the fixture's local[2]), not to the machine's or Spark's 200
    assert int(spark.conf.get("spark.sql.shuffle.partitions")) == 2
    assert local_cores("local[3]") == 3 and local_cores("local[*]") >= 1


def test_an_existing_session_is_adopted_not_rebuilt(spark, tmp_path):
    spark.conf.set("spark.sql.session.timeZone", "Europe/Paris")
    adopted = get_spark(make_config(tmp_path, "spark.app_name=other"))
    assert adopted is spark
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"  # restored: correctness depends on it
    assert spark.sparkContext.appName != "other"


def test_sessions_get_the_settings_the_stages_rely_on(spark):
    # Cached shuffle outputs may be re-partitioned by adaptive execution, and Delta's log replay uses
    # no more tasks than cores: both cut a standalone cluster's ingest of 100k events in half.
    assert spark.conf.get("spark.sql.optimizer.canChangeCachedPlanOutputPartitioning") == "true"
    cores = spark.sparkContext.defaultParallelism
    assert int(spark.conf.get("spark.databricks.delta.snapshotPartitions")) == min(50, max(2, cores))
