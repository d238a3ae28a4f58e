# Databricks notebook source
# MAGIC %md
# MAGIC # Operate segments between retrains
# MAGIC
# MAGIC Assign the users who arrived since the fit, check drift, and see how segments moved between
# MAGIC fits. The same steps the `segmentation_assign` job runs, one cell at a time. Runs as a Databricks
# MAGIC notebook (source format) or top to bottom in any Python session with the package installed; the
# MAGIC config is found from the repository root (see `segmentation/notebook.py`).

# COMMAND ----------
from segmentation.notebook import open_lake, show
from segmentation.pipeline import run_stage

lake = open_lake()
spark = lake.spark

# COMMAND ----------
# MAGIC %md
# MAGIC ## The current model
# MAGIC Each segment now: users, share, label, users at the fit, stability (small segments left out).

# COMMAND ----------
show(spark.sql("SELECT * FROM segment_summary ORDER BY segment_id"))

# COMMAND ----------
# MAGIC %md
# MAGIC ## Assign new users
# MAGIC Users with events since the fit get their segment under the current model (a MERGE into
# MAGIC `user_segments`; nobody else changes). Recorded in `pipeline_runs` like the job's run.

# COMMAND ----------
result = run_stage(spark, lake.cfg, "assign")
print(result.summary())
lake.store.register_views()  # the first assign creates segment_drift: make it queryable here too

# COMMAND ----------
# MAGIC %md
# MAGIC ## Drift
# MAGIC The latest assign's features and segment shares against the fitted snapshot; `drifted` rows passed
# MAGIC their threshold, and the `summary` row says whether a retrain is recommended.

# COMMAND ----------
if spark.catalog.tableExists("segment_drift"):  # written by the first assign or refit
    show(
        spark.sql("""
        SELECT kind, name, round(psi, 4) AS psi, round(js_distance, 4) AS js,
               round(threshold, 4) AS threshold, drifted, batch_rows, measured_at
        FROM segment_drift
        WHERE run_id = (SELECT max_by(run_id, measured_at) FROM segment_drift)
        ORDER BY kind = 'summary' DESC, drifted DESC, psi DESC
    """),
        rows=50,
    )

# COMMAND ----------
# MAGIC %md
# MAGIC ## How segments moved between fits
# MAGIC Lineage: which previous segment each new one continues (by shared members); transitions: users
# MAGIC from each old segment to each new one.

# COMMAND ----------
show(spark.sql("SELECT * FROM segment_lineage ORDER BY run_id DESC, segment_id"))
if spark.catalog.tableExists("segment_transitions"):  # from the second fit on
    show(
        spark.sql("""
        SELECT from_segment, to_segment, users FROM segment_transitions
        WHERE run_id = (SELECT max(run_id) FROM segment_transitions) ORDER BY from_segment, to_segment
    """)
    )

# COMMAND ----------
# MAGIC %md
# MAGIC ## Who moved lately
# MAGIC The latest segment changes in the history table (a slowly changing dimension).

# COMMAND ----------
show(
    spark.sql("""
    SELECT user_id, segment_id, model_version, valid_from, valid_to, is_current
    FROM user_segment_history ORDER BY valid_from DESC, user_id
""")
)
