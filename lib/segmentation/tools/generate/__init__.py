"""`segment generate`: synthetic raw logs with planted segments (see synthetic.py), for tests, the demo
and the benchmark."""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from segmentation.config import Config
from segmentation.spark import describe
from segmentation.tools.generate.synthetic import generate_logs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generated:
    raw_lines: int
    users: int
    bot_users: int
    path: Path
    truth_path: Path


def run(spark: SparkSession, cfg: Config) -> Generated:
    """Write raw JSON-lines logs to `input.path` (replacing what is there) and the planted truth (JSON
    lines: user_id, segment) where `clustering.truth_path` points, by default beside them."""
    raw = Path(cfg.input.path)
    truth = cfg.paths.truth
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
    return Generated(lines, cfg.generate.users, cfg.generate.bot_users, raw, truth)
