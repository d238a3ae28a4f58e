# Databricks notebook source
# MAGIC %md
# MAGIC # Explore a segmentation run
# MAGIC
# MAGIC What the latest fit chose and why, what each segment does, the rules that describe it, and what
# MAGIC its users buy. Runs as a Databricks notebook (source format) from the bundle's workspace files, or
# MAGIC top to bottom in any Python session with the package installed, from any folder of the repository:
# MAGIC the config is found from the repository root (`conf/databricks.yaml` on Databricks,
# MAGIC `conf/local.yaml` elsewhere; `SEGMENTATION_CONF` / `SEGMENTATION_SET` add overlays and overrides).

# COMMAND ----------
from segmentation.notebook import open_lake, show

lake = open_lake()
spark = lake.spark

# COMMAND ----------
# MAGIC %md
# MAGIC ## How the candidates compared
# MAGIC Every representation and algorithm at its chosen k; `selected` marks the published one and
# MAGIC `selection_reason` says why.

# COMMAND ----------
show(
    spark.sql("""
    SELECT representation, algorithm, k, round(silhouette_common, 3) AS silhouette_common,
           round(stability_ari, 3) AS stability_ari, round(min_segment_share, 3) AS smallest, selected,
           selection_reason
    FROM clustering_evaluation
    WHERE run_id = (SELECT max(run_id) FROM segment_profiles)
    ORDER BY selected DESC, representation, algorithm
""")
)

# COMMAND ----------
# MAGIC %md
# MAGIC ## The evidence for k
# MAGIC Per representation and k: prediction strength, gap, bootstrap Jaccard (>= 0.75 stable, <= 0.5
# MAGIC dissolved) and silhouette on the evidence sample; `chosen` marks the k the rule picked.

# COMMAND ----------
if spark.catalog.tableExists("k_evidence"):
    show(
        spark.sql("""
        SELECT representation, k, rule, chosen, round(prediction_strength, 3) AS ps, round(gap, 3) AS gap,
               round(jaccard_min, 3) AS jaccard_min, round(silhouette, 3) AS silhouette
        FROM k_evidence WHERE run_id = (SELECT max(run_id) FROM segment_profiles)
        ORDER BY representation, k
    """),
        rows=60,
    )

# COMMAND ----------
# MAGIC %md
# MAGIC ## What each segment does, and the rule that describes it
# MAGIC Size, label, bootstrap stability, and the surrogate tree's rule with its precision and recall.

# COMMAND ----------
show(
    spark.sql("""
    SELECT segment_id, label, n_users, round(share, 3) AS share, round(stability_jaccard, 2) AS jaccard,
           dissolved, rule, round(rule_precision, 2) AS precision, round(rule_recall, 2) AS recall
    FROM segment_profiles ORDER BY segment_id
""")
)

# COMMAND ----------
# MAGIC %md
# MAGIC ## What each segment buys
# MAGIC The first five items per segment, and how the lists did on the held-out days against the most
# MAGIC popular items.

# COMMAND ----------
if spark.catalog.tableExists("segment_recommendations"):
    show(
        spark.sql("""
        SELECT segment_id, kind, rank, key, buyers, round(support, 3) AS support, round(lift, 2) AS lift
        FROM segment_recommendations WHERE rank <= 5 ORDER BY kind DESC, segment_id, rank
    """),
        rows=100,
    )
    show(
        spark.sql("""
        SELECT coalesce(CAST(segment_id AS STRING), 'all') AS segment, method, users,
               round(hit_rate, 3) AS hit_rate, round(ndcg, 3) AS ndcg, k, cutoff
        FROM recommendation_evaluation
        WHERE run_id = (SELECT max(run_id) FROM recommendation_evaluation)
        ORDER BY segment_id NULLS FIRST, method
    """),
        rows=100,
    )

# COMMAND ----------
# MAGIC %md
# MAGIC ## Typical members
# MAGIC The users closest to their segment's centre, to read through.

# COMMAND ----------
show(
    spark.sql("""
    SELECT segment_id, user_id, round(distance, 3) AS distance
    FROM (SELECT *, row_number() OVER (PARTITION BY segment_id ORDER BY distance) AS r FROM user_segments)
    WHERE r <= 3 ORDER BY segment_id, distance
""")
)
