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
from segmentation.errors import ConfigError
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


# Left in every directory generate writes; Spark's file listing skips names starting with `_`, so
# ingest never reads it.
MARKER = "_SEGMENT_GENERATED"


def run(spark: SparkSession, cfg: Config, force: bool = False) -> Generated:
    """Write raw JSON-lines logs to `input.path` and the planted truth (JSON lines: user_id, segment)
    where `clustering.truth_path` points, by default beside them, replacing what an earlier `generate`
    wrote there. Anything else at those paths is refused (`force` replaces it), as are the current
    directory, its parents and any directory holding the lake or its artifacts."""
    raw = Path(cfg.input.path)
    truth = cfg.paths.truth
    protected = [Path(cfg.storage.root), cfg.paths.root, Path.cwd()]
    check_target(raw, "input.path", protected, force)
    check_target(truth, "clustering.truth_path", protected, force)
    staging = raw.parent / f".generate-{uuid.uuid4().hex}"
    describe(spark, f"generate: {cfg.generate.users} users, {cfg.generate.days} days")
    logs = generate_logs(spark, cfg.generate)
    # One job writes both outputs; each `kind=` directory then becomes its destination.
    logs.write.partitionBy("kind").option("compression", "none").text(str(staging))
    for kind, target in (("event", raw), ("truth", truth)):
        shutil.rmtree(target, ignore_errors=True)
        (staging / f"kind={kind}").rename(target)
        (target / MARKER).write_text("written by `segment generate`; it replaces this directory\n")
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


def check_target(target: Path, key: str, protected: list[Path], force: bool) -> None:
    """Refuse to replace `target` (the config key `key` names it) when it is, or contains, a protected
    directory, or when it holds anything an earlier `generate` did not write (unless `force`)."""
    resolved = target.resolve()
    for place in protected:
        place = place.resolve()
        if resolved == place or resolved in place.parents:
            raise ConfigError(
                f"config key '{key}' is {target}, which is or contains {place}: segment generate replaces "
                "its target, so it never writes there"
            )
    if force or not resolved.exists():
        return
    if resolved.is_file() or (any(resolved.iterdir()) and not (resolved / MARKER).is_file()):
        raise ConfigError(
            f"config key '{key}' is {target}, which holds data segment generate did not write; choose an "
            "empty or new directory, or pass --force to replace it"
        )
