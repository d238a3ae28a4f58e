"""Stage `embed`: user_features → user_embeddings (user_id, embedding, recon_error, model_version,
run_id), the current model applied in Spark tasks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.embed.encoder import METHODS, load_model
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import USER_EMBEDDINGS, USER_FEATURES

log = logging.getLogger(__name__)

ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"


@dataclass
class EmbedResult(StageResult):
    model_version: str = summary_field("")
    mean_recon_error: float | None = summary_field()


def run(ctx: StageContext) -> EmbedResult:
    users = ctx.store.read_or_fail(USER_FEATURES, "embed")
    path = str(ctx.paths.current_model_file())
    _, spec = load_model(path)
    ctx.describe(f"embed: model {spec.version} ({ctx.cfg.embed.method})")
    out = METHODS[ctx.cfg.embed.method](users, path).select(
        "user_id",
        "embedding",
        "recon_error",
        F.lit(spec.version).alias("model_version"),
        F.lit(ctx.run_id).alias("run_id"),
    )
    with session_setting(ctx.spark, ARROW_BATCH, str(ctx.cfg.embed.batch_size)):
        ctx.store.overwrite(out, USER_EMBEDDINGS)
    stats = (
        ctx.store.read(USER_EMBEDDINGS).agg(F.count("*").alias("n"), F.avg("recon_error").alias("err")).head()
    )
    log.info(
        "embed: %d users embedded (dim %d) with model %s; mean reconstruction error %.4f",
        stats["n"],
        spec.embedding_dim,
        spec.version,
        stats["err"] or float("nan"),
    )
    return EmbedResult(
        rows_in=users.count(), rows_out=stats["n"], model_version=spec.version, mean_recon_error=stats["err"]
    )


@contextlib.contextmanager
def session_setting(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """`key` set to `value` for the jobs run inside, then restored (the session is the user's)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
