"""Stage `generate`: synthetic raw logs with planted segments (see synthetic.py)."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from pyspark.sql import SparkSession

from segmentation.config import Config
from segmentation.generate.synthetic import generate_logs
from segmentation.spark import describe

log = logging.getLogger(__name__)


def truth_path(cfg: Config) -> Path:
    """The planted truth sits beside the raw logs: `<input.path>_truth/` (JSON lines, one per user)."""
    raw = Path(cfg.input.path)
    return raw.parent / f"{raw.name}_truth"


def run(spark: SparkSession, cfg: Config) -> dict:
    """Write raw JSON-lines logs to `input.path` (replacing what is there) and the truth beside them."""
    raw = Path(cfg.input.path)
    truth = truth_path(cfg)
    staging = raw.parent / f".generate-{uuid.uuid4().hex}"
    describe(spark, f"generate: {cfg.generate.users} users, {cfg.generate.days} days")
    logs = generate_logs(spark, cfg.generate)
    # One job writes both outputs; each `kind=` directory then becomes its destination.
    logs.write.partitionBy("kind").option("compression", "none").text(str(staging))
    for kind, target in (("event", raw), ("truth", truth)):
        shutil.rmtree(target, ignore_errors=True)
        (staging / f"kind={kind}").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    lines = spark.read.text(str(raw)).count()
    log.info(
        "generated %d raw log lines for %d users (+%d bots) in %s; truth in %s",
        lines,
        cfg.generate.users,
        cfg.generate.bot_users,
        raw,
        truth,
    )
    return {
        "raw_lines": lines,
        "users": cfg.generate.users,
        "bot_users": cfg.generate.bot_users,
        "path": str(raw),
        "truth_path": str(truth),
    }
