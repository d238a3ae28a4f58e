# Databricks notebook source
# Explore the segments of the latest run. Runs as a Databricks notebook (source format) or cell by cell
# in any Python session with the package installed; all logic lives in the `segmentation` library.

# COMMAND ----------
from segmentation.config import load_config
from segmentation.spark import get_spark
from segmentation.storage import open_store

cfg = load_config(["conf/local.yaml"])  # on Databricks: ["conf/databricks.yaml"]
spark = get_spark(cfg)
open_store(spark, cfg.storage).register_views()

# COMMAND ----------
# How the candidate segmentations compared (embedding vs the raw-feature baseline).
spark.sql("""
    SELECT representation, algorithm, k, round(silhouette, 3) AS silhouette,
           round(calinski_harabasz, 1) AS ch, round(davies_bouldin, 3) AS db, selected
    FROM clustering_evaluation
    WHERE run_id = (SELECT max(run_id) FROM segment_profiles)
    ORDER BY representation, algorithm, k
""").show()

# COMMAND ----------
# What each segment does, in interpretable units.
spark.sql("SELECT * FROM segment_profiles ORDER BY segment_id").show(truncate=False)

# COMMAND ----------
# Users closest to their segment's centre: typical members to read through.
spark.sql("""
    SELECT segment_id, user_id, round(distance, 3) AS distance
    FROM (SELECT *, row_number() OVER (PARTITION BY segment_id ORDER BY distance) AS r FROM user_segments)
    WHERE r <= 3 ORDER BY segment_id, distance
""").show()
