"""`segment <stage> --conf FILE [--conf FILE ...] [--set key=value ...]` (DESIGN.md §3).

Results go to stdout, progress to stderr; any failure exits non-zero with a one-line reason.
The same entry point backs `jobs/<stage>.py`, so spark-submit and Databricks behave like the CLI.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import textwrap
from collections.abc import Sequence

from segmentation.errors import SegmentationError, one_line
from segmentation.registry import COMMANDS, STAGES

log = logging.getLogger("segmentation.cli")


def _common_options() -> argparse.ArgumentParser:
    """The options every stage and command takes (a parent parser of each one's own)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="FILE",
        help=(
            "the product's YAML config, overlaid on the defaults inside the package; repeatable, later "
            "files win (not a Spark setting: those go under spark.conf in the YAML)"
        ),
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one dotted config key with a YAML value; applied last",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    return common


CONF_NOTE = textwrap.fill(
    "--conf here takes the product's YAML config file, never a Spark setting. Under spark-submit, "
    "Spark's own --conf key=value goes before the job file and the product's --conf FILE after it: "
    "spark-submit --conf spark.executor.memory=4g jobs/run.py --conf conf/local.yaml. Spark settings "
    "can also live in the YAML, under spark.conf.",
    width=100,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment",
        description="Deep user segmentation on Spark. `segment STAGE --help` shows a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "stages:\n"
            + "".join(f"  {s.name:<10} {s.help}\n" for s in STAGES)
            + "other commands:\n"
            + "".join(f"  {name:<10} {text}\n" for name, text in COMMANDS.items())
            + "\n"
            + CONF_NOTE
        ),
    )
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    common = [_common_options()]
    for entry in STAGES:
        sub = commands.add_parser(
            entry.name,
            parents=common,
            help=entry.help,
            description=f"{entry.help}.\n\nreads:  {', '.join(entry.reads)}\nwrites: {', '.join(entry.writes)}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=CONF_NOTE,
        )
        sub.add_argument("--run-id", help="run id to record this stage under (default: a new one)")

    def command(name: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=common,
            help=COMMANDS[name],
            description=COMMANDS[name] + ".",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=CONF_NOTE,
        )

    run = command("run")
    resumable = run.add_mutually_exclusive_group()
    resumable.add_argument("--run-id", help="run id to record the stages under (default: a new one)")
    resumable.add_argument(
        "--resume", metavar="RUN_ID", help="skip the stages RUN_ID completed, run the rest under it"
    )
    run.add_argument(
        "--if-drifted",
        action="store_true",
        help="retrain only when the latest drift assign measured for the current model recommends it "
        "(or no model is fitted yet); otherwise print why not and exit 0",
    )
    sql = command("sql")
    sql.add_argument("query", help='the SQL, e.g. "SELECT * FROM user_segments LIMIT 10"')
    sql.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    sql.add_argument("--limit", type=int, default=1000, help="table format: rows to print at most")
    sql.add_argument(
        "--allow-writes",
        action="store_true",
        help="run statements that change tables (by default only queries run)",
    )
    command("check-drift")
    generate = command("generate")
    generate.add_argument(
        "--force", action="store_true", help="replace a non-empty input.path generate did not write"
    )
    bench = command("bench")
    bench.add_argument("--out", metavar="FILE.json", required=True, help="results file (+ FILE.md beside)")
    bench.add_argument(
        "--quality",
        choices=("held-out", "tuning"),
        help="the quality lab instead: worlds of the held-out seeds (the reported figures) or the tuning "
        "seeds; results as JSON lines in --out (measured worlds are skipped on a rerun), .md and .png beside",
    )
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "matplotlib", "urllib3", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pyspark.logger import PySparkLogger

    # PySpark logs every SQL error as a JSON record on stderr before raising it; the CLI prints the
    # error in one line itself (-v shows the records and the traceback).
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)


def _missing_provided() -> str | None:
    """The one-line reason when Spark itself is absent: it is an extra of the package (a Databricks
    runtime provides its own), so a bare `pip install` leaves it out."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        return (
            "pyspark is not installed: it is the package's `spark` extra (Databricks runtimes provide "
            "it); pip install 'deep-user-segmentation[spark]'"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = _missing_provided()
    if missing:
        print(f"segment {args.stage}: error: {missing}", file=sys.stderr)
        return 2
    _configure_logging(args.verbose)
    try:
        return _dispatch(args)
    except SegmentationError as exc:
        print(f"segment {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Spark and library errors: one line, the traceback only with -v
        if args.verbose:
            log.exception("stage %s failed", args.stage)
        print(f"segment {args.stage}: failed: {one_line(exc)}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from segmentation.config import load_config
    from segmentation.errors import ConfigError

    if args.stage == "sql" and not args.query.strip():
        raise ConfigError('segment sql needs a query, e.g. segment sql "SELECT * FROM user_segments"')
    cfg = load_config(args.conf, args.overrides)

    from segmentation.spark import get_spark

    spark = get_spark(cfg)
    if args.stage == "generate":
        from segmentation.tools import generate

        made = generate.run(spark, cfg, force=args.force)
        print(
            f"generated {made.raw_lines} log lines for {made.users} users (+{made.bot_users} bots) in "
            f"{made.path}; planted truth in {made.truth_path}"
        )
        return 0
    if args.stage == "sql":
        return _sql(spark, cfg, args.query, args.format, args.limit, args.allow_writes)
    if args.stage == "bench":
        from pathlib import Path

        from segmentation.tools import bench

        if args.quality:
            from segmentation.tools.bench import quality

            seeds = (
                quality.held_out_seeds(cfg.bench.quality_worlds)
                if args.quality == "held-out"
                else list(quality.TUNING_SEEDS)
            )
            quality.run(spark, cfg, Path(args.out), seeds)
            print(
                f"results: {args.out}, {Path(args.out).with_suffix('.md')}, {Path(args.out).with_suffix('.png')}"
            )
            return 0
        results = bench.run(spark, cfg, Path(args.out))
        for key, target in results["targets"].items():
            met = {True: "met", False: "MISSED", None: "n/a"}[target["met"]]
            print(f"{key}: {target['value']} (target {target['target']}): {met}")
        print(f"results: {args.out} and {Path(args.out).with_suffix('.md')}")
        return 0
    if args.stage == "run":
        from segmentation.pipeline import run_pipeline

        if args.if_drifted or cfg.drift.retrain == "if_drifted":
            retrain, why = _retrain(spark, cfg, if_drifted=True)
            print(f"segment run --if-drifted: {'retraining' if retrain else 'nothing to do'}: {why}")
            if not retrain:
                return 0

        run_id, results = run_pipeline(spark, cfg, resume=args.resume, run_id=args.run_id)
        _summary(spark, cfg, run_id, results)
        return 0

    if args.stage == "check-drift":
        from segmentation import databricks

        retrain, why = _retrain(spark, cfg, if_drifted=cfg.drift.retrain == "if_drifted")
        databricks.set_task_value("retrain", "true" if retrain else "false")
        print(json.dumps({"retrain": retrain, "why": why}))
        return 0

    from segmentation.pipeline import run_stage

    result = run_stage(spark, cfg, args.stage, args.run_id)
    print(json.dumps({"stage": args.stage, **result.summary()}, default=str))
    return 0


def _retrain(spark, cfg, if_drifted: bool) -> tuple[bool, str]:
    """Whether the pipeline should retrain, and why: always, or as the latest drift recommends."""
    if not if_drifted:
        return True, "drift.retrain is always"
    from segmentation.assign.drift import retrain_recommended
    from segmentation.stage import StageContext

    return retrain_recommended(StageContext.create(spark, cfg, "if-drifted"))


def _summary(spark, cfg, run_id: str, results: dict) -> None:
    """What `segment run` prints: segment sizes and where the report is."""
    from segmentation.storage import open_store
    from segmentation.tables import USER_SEGMENTS

    store = open_store(spark, cfg.storage)
    sizes = (
        store.read(USER_SEGMENTS)
        .groupBy("segment_id", "algorithm", "k")
        .count()
        .orderBy("segment_id")
        .collect()
    )
    total = sum(r["count"] for r in sizes)
    print(
        f"run {run_id}: {total} users in {len(sizes)} segments"
        + (f" ({sizes[0]['algorithm']}, k={sizes[0]['k']})" if sizes else "")
    )
    for r in sizes:
        print(f"  segment {r['segment_id']}: {r['count']:>8} users ({r['count'] / max(total, 1):.1%})")
    print(f"report: {cfg.paths.report(run_id).resolve()}")


# `segment sql` runs these statements only, unless --allow-writes: a query over the lake must not be
# able to drop, overwrite or rewrite it (INSERT OVERWRITE DIRECTORY into the lake destroyed a table).
READ_ONLY_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE", "FROM")
WRITE_NODE = re.compile(
    r"^(Insert|Overwrite|Append|Create|Replace|Drop|Delete|Update|Merge|Alter|Truncate|Rename|Set|"
    r"Cache|Uncache|Refresh|Optimize|Vacuum|Restore|Reorg|Repair|Load|Add|Clone|Clear|Recover)"
)


def statement_nodes(spark, query: str) -> list[str]:
    """The node names of the statement's parsed (unresolved) plan, root first: from Spark's parser, or
    under Spark Connect (no parser to reach) from the parsed plan that EXPLAIN EXTENDED prints, which
    plans the statement without running it."""
    from segmentation.spark import is_connect

    if is_connect(spark):
        explained = spark.sql("EXPLAIN EXTENDED " + query).head()[0]
        tree = explained.split("== Parsed Logical Plan ==", 1)[-1].split("\n== ", 1)[0]
    else:
        tree = spark._jsparkSession.sessionState().sqlParser().parsePlan(query).treeString()
    return [line.strip(" :+-'").split(" ")[0] for line in tree.splitlines() if line.strip()]


def is_read_only(query: str, nodes: list[str]) -> bool:
    """A query: it starts with a reading keyword and its plan has no node that writes."""
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", query, flags=re.S).lstrip(" \t\r\n(")
    first = (text.split(None, 1) or [""])[0].upper()
    return first in READ_ONLY_STATEMENTS and not any(WRITE_NODE.match(node) for node in nodes)


def _sql(spark, cfg, query: str, fmt: str, limit: int, allow_writes: bool = False) -> int:
    from pyspark.sql import functions as F

    from segmentation import views
    from segmentation.cluster.stage import published_run
    from segmentation.errors import ConfigError, StageError
    from segmentation.storage import open_store
    from segmentation.tables import SEGMENT_CENTROIDS, SEGMENT_PROFILES, USER_SEGMENTS

    if not allow_writes and not is_read_only(query, statement_nodes(spark, query)):
        raise ConfigError(
            "segment sql runs queries only (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN); pass --allow-writes "
            "to run a statement that changes tables"
        )
    store = open_store(spark, cfg.storage)
    registered = store.register_views()
    views.register(spark, cfg.privacy.min_segment_size, cfg.recommend.event_types)
    if {USER_SEGMENTS, SEGMENT_PROFILES, SEGMENT_CENTROIDS} <= set(registered):
        try:
            published_run(store)
        except StageError as exc:  # the query still runs: it may be the way to look into it
            log.warning("%s", exc)
    frame = spark.sql(query)
    columns = frame.columns
    out = sys.stdout
    if fmt == "json":
        # to_json rather than DataFrame.toJSON, which Spark Connect lacks; both leave out null fields
        as_json = frame.select(F.to_json(F.struct(*[frame[c] for c in columns])).alias("line"))
        for row in as_json.toLocalIterator():
            out.write(row.line + "\n")
        return 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in frame.toLocalIterator():
            writer.writerow(["" if v is None else v for v in row])
        return 0
    rows = [["NULL" if v is None else str(v) for v in row] for row in frame.limit(limit + 1).collect()]
    shown = rows[:limit]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print(line)
    for r in shown:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |")
    print(line)
    print(
        f"{len(shown)} row(s)"
        + (f" (first {limit}; use --limit or --format json for all)" if len(rows) > limit else "")
    )
    return 0


def job_main(stage: str) -> None:
    """Entry point of `jobs/<stage>.py` under spark-submit or as a Databricks spark_python_task."""
    code = main([stage, *sys.argv[1:]])
    if code:
        sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
