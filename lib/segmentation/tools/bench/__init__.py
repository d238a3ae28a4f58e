"""`segment bench`: every stage measured against a peer or a limit in the same run, on the same data
and cores, plus end-to-end time at several sizes. Writes JSON and a markdown table beside it.

Figures and targets are the ones of README "Performance". Ratios are medians over `bench.repeats`
repeats. The work happens under `bench.work_dir`, away from the product's own tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.arrays import list_column_matrix
from segmentation.config import Config
from segmentation.spark import describe
from segmentation.spark import master as spark_master
from segmentation.tools.bench import peers
from segmentation.tools.bench.peers import median

log = logging.getLogger(__name__)

EVENTS_PER_USER = 31  # generator average with the default config (measured: 617k lines for 20k users)
TARGETS = {  # key: (comparison, bound)
    "embed_ratio_vs_torch": (">=", 0.30),
    "train_ratio_vs_single_process": (">=", 0.70),
    "features_ratio_vs_pyarrow": ("<=", 1.3),
    "kmeans_ratio_vs_sklearn": ("<=", 5.0),
    "kmeans_inertia_ratio": ("<=", 1.01),
    "e2e_seconds_first": ("<=", 180.0),
    "e2e_scaling_4x": ("<=", 3.0),
}


def run(spark: SparkSession, cfg: Config, out: Path) -> dict:
    """Run every measurement; write `out` (JSON) and `out` with suffix .md. Returns the figures."""
    work = Path(cfg.bench.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"machine": machine(spark)}
    e2e = end_to_end(spark, cfg, work)
    results.update(e2e["figures"])
    largest = e2e["largest"]
    results.update(features_vs_pyarrow(spark, largest, cfg.bench.repeats))
    results.update(training_vs_single_process(spark, largest, cfg.bench.train_epochs))
    results.update(embedding_vs_torch(spark, largest, work, cfg.bench.embed_rows, cfg.bench.repeats))
    results.update(kmeans_vs_sklearn(spark, cfg, work))
    if cfg.bench.cluster:
        results.update(cluster_vs_local(spark, cfg, work, results))
    results["bench_seconds"] = time.perf_counter() - started
    results["targets"] = check_targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(results))
    log.info("bench: %s and %s written in %.0f s", out, out.with_suffix(".md"), results["bench_seconds"])
    return results


def machine(spark: SparkSession) -> dict:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    packages = ("pyspark", "torch", "pyarrow", "numpy", "scikit-learn", "deltalake", "petastorm")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": peers._cores(),
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "spark_master": spark_master(spark),
        "versions": versions,
    }


def _sized_config(cfg: Config, root: Path, events: int) -> Config:
    """The bench config for one size: its own lake, logs and reports under `root`."""
    return replace(
        cfg,
        storage=replace(cfg.storage, root=str(root / "lake")),
        input=replace(cfg.input, path=str(root / "raw")),
        report=replace(cfg.report, path=str(root / "reports")),
        generate=replace(cfg.generate, users=max(200, events // EVENTS_PER_USER)),
    )


def end_to_end(spark: SparkSession, cfg: Config, work: Path) -> dict:
    """`segment run` (ingest → report, the configured defaults) on generated logs at each size."""
    from segmentation.pipeline import run_pipeline
    from segmentation.tools import generate

    seconds, events, stages, quality = {}, {}, {}, {}
    largest = None
    for target in cfg.bench.e2e_events:
        root = work / f"e2e_{target}"
        shutil.rmtree(root, ignore_errors=True)
        sized = _sized_config(cfg, root, target)
        generated = generate.run(spark, sized)
        log.info(
            "bench: e2e %d events (%d lines generated); running the pipeline", target, generated.raw_lines
        )
        started = time.perf_counter()
        run_id, results = run_pipeline(spark, sized)
        seconds[str(target)] = time.perf_counter() - started
        events[str(target)] = results["ingest"].rows_in
        stages[str(target)] = _stage_seconds(spark, sized, run_id)
        selected = results["cluster"].selected
        baseline = results["cluster"].raw_baseline or {}
        quality[str(target)] = {
            "selected": selected.get("ari_truth"),
            "raw_baseline": baseline.get("ari_truth"),
        }
        log.info("bench: e2e %d events: %.1f s %s", target, seconds[str(target)], stages[str(target)])
        largest = sized
    first, last = (str(n) for n in (cfg.bench.e2e_events[0], cfg.bench.e2e_events[-1]))
    top = quality[last]
    figures = {
        "e2e_seconds": seconds,
        "e2e_events_read": events,
        "e2e_stage_seconds": stages,
        "e2e_scaling_4x": seconds[last] / seconds[first],
        "e2e_size_ratio": int(last) / int(first),
        "ari_selected": top["selected"],
        "ari_raw_baseline": top["raw_baseline"],
        "ari_by_size": quality,
    }
    return {"figures": figures, "largest": largest}


def features_vs_pyarrow(spark: SparkSession, cfg: Config, repeats: int) -> dict:
    """The features stage (vocabulary, aggregation, scaling, Delta write) vs pyarrow group-bys computing
    the same per-user totals and shares from the same silver table, read by each side."""
    from segmentation.features import stage as features
    from segmentation.features.aggregates import vocabulary
    from segmentation.stage import StageContext

    spark_seconds, arrow_seconds, phases = [], [], []
    for i in range(repeats):
        describe(spark, f"bench: features stage {i + 1}/{repeats}")
        started = time.perf_counter()
        result = features.run(StageContext.create(spark, cfg, f"bench-features-{i}"))
        spark_seconds.append(time.perf_counter() - started)
        phases.append(result.phase_seconds)
    vocab = vocabulary(
        _store(spark, cfg).read("events_silver"), cfg.features.top_categories, cfg.features.top_devices
    )
    for _ in range(repeats):
        started = time.perf_counter()
        events = _read_with_pyarrow(_store(spark, cfg), "events_silver", FEATURE_INPUTS)
        users = peers.pyarrow_user_totals(events, list(vocab.categories), list(vocab.devices))
        arrow_seconds.append(time.perf_counter() - started)
    log.info(
        "bench: features %.2f s (Spark stage) vs %.2f s (pyarrow), %d users",
        median(spark_seconds),
        median(arrow_seconds),
        users.num_rows,
    )
    return {
        "features_seconds": median(spark_seconds),
        "features_pyarrow_seconds": median(arrow_seconds),
        "features_ratio_vs_pyarrow": median(spark_seconds) / median(arrow_seconds),
        "features_events": events.num_rows,
        "features_phase_seconds": {name: median([p[name] for p in phases]) for name in phases[0]},
    }


def training_vs_single_process(spark: SparkSession, cfg: Config, epochs: int) -> dict:
    """Steady samples/s of the train stage (TorchDistributor, every feeder) vs a single-process torch
    loop over the same users in memory; plus each launch's fixed overhead."""
    from segmentation.stage import StageContext
    from segmentation.train import stage as train
    from segmentation.train.feeders import petastorm_available, resolve_feeder

    settings = replace(cfg.training, epochs=epochs, patience=0, tracking=False, stop_after_epochs=None)
    feeders = ["arrow", "petastorm"] if petastorm_available() else ["arrow"]
    by_feeder, overhead = {}, {}
    for feeder in feeders:
        run_cfg = replace(cfg, training=replace(settings, feeder=feeder))
        describe(spark, f"bench: train ({feeder})")
        started = time.perf_counter()
        result = train.run(StageContext.create(spark, run_cfg, f"bench-train-{feeder}-{int(time.time())}"))
        total = time.perf_counter() - started
        steady = median(result.epoch_seconds[1:])
        by_feeder[feeder] = result.samples_per_epoch / steady
        batch_size = result.batch_size  # the per-process batch the launcher resolved
        overhead[feeder] = total - sum(result.epoch_seconds)
    features = _read_with_pyarrow(_store(spark, cfg), "user_features", ["features"]).column("features")
    rows = list_column_matrix(features).copy()  # writable: the torch peer trains on it in place
    rows = rows[: max(1, int(len(rows) * (1 - settings.validation_share)))]

    def peer_rate(threads: int | None) -> float:
        seconds = peers.torch_train_epoch_seconds(
            rows,
            tuple(settings.hidden_sizes),
            settings.embedding_dim,
            batch_size,
            settings.learning_rate,
            epochs,
            threads,
        )
        return len(rows) / median(seconds[1:])

    single_rate = peer_rate(None)
    # The distributed run's processes each have one thread: how fast one such process goes tells
    # lockstep and gradient exchange (two of them short of twice this) from torch's own threading.
    one_thread_rate = peer_rate(1)
    default = resolve_feeder(cfg.training.feeder)
    ratios = {feeder: rate / single_rate for feeder, rate in by_feeder.items()}
    log.info("bench: training samples/s %s vs single process %.0f", by_feeder, single_rate)
    return {
        "train_samples_per_s": by_feeder,
        "train_single_process_samples_per_s": single_rate,
        "train_one_thread_samples_per_s": one_thread_rate,
        "train_processes": cfg.training.num_processes,
        "train_ratio_by_feeder": ratios,
        "train_ratio_vs_single_process": ratios.get(default, next(iter(ratios.values()))),
        "train_default_feeder": default,
        "train_launch_overhead_seconds": overhead,
        "train_rows": len(rows),
    }


def embedding_vs_torch(spark: SparkSession, cfg: Config, work: Path, n_rows: int, repeats: int) -> dict:
    """Rows/s of the embed step (the product's Spark path, from parquet to a no-op sink) vs single-process
    torch encoding the same rows from memory, with the model the largest end-to-end run trained."""
    import pyarrow.parquet as pq

    from segmentation.embed.encoder import METHODS
    from segmentation.train.model import load

    model_path = str(cfg.paths.current_model_file())
    _, spec = load(model_path)
    path = work / "embed_rows.parquet"
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(n_rows, spec.input_dim)).astype(np.float32)
    import pyarrow as pa

    flat = pa.array(rows.reshape(-1))
    table = pa.table(
        {
            "user_id": pa.array([f"u{i}" for i in range(n_rows)]),
            "features": pa.FixedSizeListArray.from_arrays(flat, spec.input_dim).cast(pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path, row_group_size=max(1, n_rows // (4 * peers._cores())))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.embed.batch_size))
    embed = METHODS[cfg.embed.method]
    product, limit, exchange = [], [], []
    for i in range(repeats):
        describe(spark, f"bench: embed {i + 1}/{repeats}")
        users = spark.read.parquet(str(path))
        started = time.perf_counter()
        embed(users, model_path).write.format("noop").mode("overwrite").save()
        product.append(time.perf_counter() - started)
        limit.append(peers.torch_embed_seconds(model_path, rows, cfg.embed.batch_size))
        # What the hand-off alone costs: the same rows to Python and back as Arrow, with no model.
        started = time.perf_counter()
        users.mapInArrow(_unchanged, users.schema).write.format("noop").mode("overwrite").save()
        exchange.append(time.perf_counter() - started)
    log.info(
        "bench: embed %d rows %.2f s (Spark; %.2f s of it the Spark-Python exchange alone) vs %.2f s (torch)",
        n_rows,
        median(product),
        median(exchange),
        median(limit),
    )
    return {
        "embed_rows": n_rows,
        "embed_rows_per_s": n_rows / median(product),
        "embed_torch_rows_per_s": n_rows / median(limit),
        "embed_ratio_vs_torch": median(limit) / median(product),
        "embed_exchange_seconds": median(exchange),
        "embed_seconds": median(product),
        "embed_method": cfg.embed.method,
    }


def _unchanged(batches):
    yield from batches


def kmeans_vs_sklearn(spark: SparkSession, cfg: Config, work: Path) -> dict:
    """The product's MLlib KMeans fit vs scikit-learn KMeans on the same points in memory, at each k:
    time ratio and inertia ratio (MLlib / scikit-learn)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.functions import array_to_vector

    from segmentation.cluster.fit import fit

    rng = np.random.default_rng(1)
    n, dim = cfg.bench.kmeans_rows, cfg.bench.kmeans_dim
    centres = rng.normal(scale=4.0, size=(40, dim))
    points = (centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim))).astype(np.float32)
    path = work / "kmeans_points.parquet"
    pq.write_table(
        pa.table(
            {
                "values": pa.FixedSizeListArray.from_arrays(pa.array(points.reshape(-1)), dim).cast(
                    pa.list_(pa.float32())
                )
            }
        ),
        path,
    )
    vectors = spark.read.parquet(str(path)).withColumn("vector", array_to_vector("values")).cache()
    vectors.count()
    ratio, inertia = {}, {}
    try:
        for k in cfg.bench.kmeans_k:
            mllib, sk, costs = [], [], []
            for i in range(cfg.bench.repeats):
                describe(spark, f"bench: kmeans k={k} {i + 1}/{cfg.bench.repeats}")
                settings = replace(cfg.clustering, seed=cfg.clustering.seed + i, restarts=1)  # one fit each
                started = time.perf_counter()
                model = fit(vectors, "kmeans", k, settings)
                mllib.append(time.perf_counter() - started)
                seconds, sk_inertia = peers.sklearn_kmeans(
                    points.astype(np.float64), k, settings.seed, settings.max_iter
                )
                sk.append(seconds)
                costs.append(model.summary.trainingCost / sk_inertia)
            ratio[str(k)] = median(mllib) / median(sk)
            inertia[str(k)] = median(costs)
            log.info(
                "bench: kmeans k=%d MLlib %.2f s vs scikit-learn %.2f s, inertia ratio %.4f",
                k,
                median(mllib),
                median(sk),
                inertia[str(k)],
            )
    finally:
        vectors.unpersist()
    return {
        "kmeans_rows": n,
        "kmeans_ratio_vs_sklearn": ratio,
        "kmeans_inertia_ratio": inertia,
    }


# The silver columns the features stage reads, for the pyarrow peer.
FEATURE_INPUTS = [
    "user_id",
    "event_time",
    "event_date",
    "event_type",
    "value",
    "quantity",
    "session_id",
    "category",
    "device",
]


def _read_with_pyarrow(store, name: str, columns: list[str]):
    """The table's current snapshot read by pyarrow, from the files the table layer names (which
    refuses files with deletion vectors), whichever engine wrote them."""
    import pyarrow.dataset as ds

    files = list(store.snapshot(name).files)
    return ds.dataset(
        files, format="parquet", partitioning="hive", partition_base_dir=store.location(name)
    ).to_table(columns=columns)


def cluster_vs_local(spark: SparkSession, cfg: Config, work: Path, results: dict) -> dict:
    """The first size's generated logs through `spark-submit jobs/run.py` on a standalone cluster on this
    machine (a master and two 1-core workers: the same two cores as local[*]; training as barrier tasks
    on the executors), stage by stage beside the local run of the same logs."""
    import subprocess
    import sys

    import yaml

    from segmentation.standalone import StandaloneCluster

    size = str(cfg.bench.e2e_events[0])
    local_root = work / f"e2e_{size}"
    root = work / "cluster"
    shutil.rmtree(root, ignore_errors=True)
    sized = _sized_config(cfg, local_root, int(size))
    on_cluster = replace(
        sized,
        spark=replace(sized.spark, master=None),
        storage=replace(sized.storage, root=str(root / "lake"), artifacts=None),
        report=replace(sized.report, path=str(root / "reports")),
        training=replace(sized.training, local_mode=False),
    )
    conf = root / "bench-cluster.yaml"
    root.mkdir(parents=True)
    conf.write_text(yaml.safe_dump(dataclasses.asdict(on_cluster)))
    cluster = StandaloneCluster(root / "standalone", workers=2, cores=1, memory="2g")
    url = cluster.start()
    try:
        submit = Path(sys.executable).parent / "spark-submit"
        # the source tree's job (the benchmark runs from a checkout: `make bench`)
        jobs = next(p / "jobs" / "run.py" for p in Path(__file__).resolve().parents if (p / "jobs").is_dir())
        log.info("bench: e2e %s events again on the standalone cluster %s", size, url)
        started = time.perf_counter()
        proc = subprocess.run(
            [str(submit), "--master", url, str(jobs), "--conf", str(conf)],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    finally:
        cluster.stop()
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).strip().splitlines() or ["(no output)"]
        tail = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
        raise RuntimeError(f"bench: the cluster run failed: {tail}")
    run_id = submitted_run_id(proc.stdout)
    figures = cluster_figures(size, seconds, _stage_seconds(spark, on_cluster, run_id), results)
    log.info(
        "bench: cluster %.1f s vs local %.1f s; stages %s",
        seconds,
        results["e2e_seconds"][size],
        figures["cluster_stage_seconds"],
    )
    return figures


def submitted_run_id(stdout: str) -> str:
    """The run id in a `spark-submit jobs/run.py` output: spark-submit merges the driver's log (stderr)
    into its stdout, and the summary line `run RUN_ID: ...` names the run."""
    found = re.search(r"^run (\S+): ", stdout, re.M)
    if found is None:
        raise RuntimeError("bench: the cluster run printed no `run RUN_ID:` summary line")
    return found.group(1)


def cluster_figures(size: str, seconds: float, stages: dict[str, float], results: dict) -> dict:
    """The cluster run's figures beside the local run of the same `size`: its seconds, its stage seconds
    and each one's ratio to the local stage (stages the local run did not time are left out)."""
    local_stages = results["e2e_stage_seconds"][size]
    return {
        "cluster_events": int(size),
        "cluster_seconds": seconds,
        "cluster_stage_seconds": stages,
        "cluster_stage_ratio_vs_local": {
            s: stages[s] / local_stages[s] for s in stages if local_stages.get(s)
        },
        "cluster_ratio_vs_local": seconds / results["e2e_seconds"][size],
    }


def _stage_seconds(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    from segmentation.tables import PIPELINE_RUNS

    rows = (
        _store(spark, cfg)
        .read(PIPELINE_RUNS)
        .where(F.col("run_id") == run_id)
        .select("stage", (F.unix_micros("finished_at") - F.unix_micros("started_at")).alias("us"))
        .collect()  # one row per stage
    )
    return {r.stage: round(r.us / 1e6, 1) for r in rows}


def _store(spark: SparkSession, cfg: Config):
    from segmentation.storage import open_store

    return open_store(spark, cfg.storage)


def check_targets(results: dict) -> dict:
    """Each target: the measured value(s), the bound and whether it holds."""

    def holds(value, op, bound) -> bool | None:
        if value is None:
            return None
        return value >= bound if op == ">=" else value <= bound

    first = next(iter(results["e2e_seconds"].values()))
    measured = {
        "embed_ratio_vs_torch": results["embed_ratio_vs_torch"],
        "train_ratio_vs_single_process": results["train_ratio_vs_single_process"],
        "features_ratio_vs_pyarrow": results["features_ratio_vs_pyarrow"],
        "kmeans_ratio_vs_sklearn": max(results["kmeans_ratio_vs_sklearn"].values()),
        "kmeans_inertia_ratio": max(results["kmeans_inertia_ratio"].values()),
        "e2e_seconds_first": first,
        "e2e_scaling_4x": results["e2e_scaling_4x"],
    }
    out = {
        key: {"value": measured[key], "target": f"{op} {bound}", "met": holds(measured[key], op, bound)}
        for key, (op, bound) in TARGETS.items()
    }
    selected, baseline = results["ari_selected"], results["ari_raw_baseline"]
    out["ari_selected"] = {
        "value": selected,
        "target": f">= ari_raw_baseline ({baseline})",
        "met": None if selected is None or baseline is None else selected >= baseline,
    }
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, Spark master "
        f"`{m['spark_master']}`; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        "| figure | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for key, t in results["targets"].items():
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| `{key}` | {shown} | {t['target']} | {met} |")
    causes = [
        f"- `{key}`: {_dominant_cost(key, results)}"
        for key, t in results["targets"].items()
        if t["met"] is False
    ]
    if causes:
        lines += ["", "Missed, and what dominates the cost (measured in this run):", "", *causes]
    lines += ["", "Details:", ""]
    lines.append(
        f"- end to end seconds by events: {_fmt(results['e2e_seconds'])}; events read "
        f"{results['e2e_events_read']}; scaling {results['e2e_scaling_4x']:.2f} for "
        f"{results['e2e_size_ratio']:.0f}x the events"
    )
    for size, stages in results["e2e_stage_seconds"].items():
        lines.append(f"- stage seconds at {size} events: {_fmt(stages)}")
    lines.append(
        f"- kmeans time ratio by k: {_fmt(results['kmeans_ratio_vs_sklearn'])}; inertia ratio "
        f"{_fmt(results['kmeans_inertia_ratio'], 4)} ({results['kmeans_rows']} points)"
    )
    lines.append(
        f"- training samples/s by feeder {_fmt(results['train_samples_per_s'], 0)} vs single "
        f"process {results['train_single_process_samples_per_s']:.0f}; ratios "
        f"{_fmt(results['train_ratio_by_feeder'])}; launch overhead s "
        f"{_fmt(results['train_launch_overhead_seconds'], 1)}; one process at one thread "
        f"{results['train_one_thread_samples_per_s']:.0f}, so {results['train_processes']} such processes "
        f"in perfect step would make {results['train_processes'] * results['train_one_thread_samples_per_s']:.0f}"
    )
    lines.append(
        f"- embed rows/s {results['embed_rows_per_s']:.0f} ({results['embed_method']}) vs torch "
        f"{results['embed_torch_rows_per_s']:.0f} ({results['embed_rows']} rows); of the embed step's "
        f"{results['embed_seconds']:.2f} s, passing the same rows to Python and back unchanged (no model) "
        f"takes {results['embed_exchange_seconds']:.2f} s"
    )
    lines.append(
        f"- features {results['features_seconds']:.2f} s vs pyarrow "
        f"{results['features_pyarrow_seconds']:.2f} s ({results['features_events']} events); the stage's "
        f"seconds by phase: {_fmt(results['features_phase_seconds'])}"
    )
    lines.append(f"- ARI vs planted truth by size: {results['ari_by_size']}")
    if "cluster_seconds" in results:
        lines.append(
            f"- the {results['cluster_events']} events again via spark-submit on a standalone cluster "
            f"(2 workers x 1 core, training on the executors): {results['cluster_seconds']:.1f} s, "
            f"{results['cluster_ratio_vs_local']:.2f}x the local run; stage seconds "
            f"{_fmt(results['cluster_stage_seconds'], 1)}; ratio to local by stage "
            f"{_fmt(results['cluster_stage_ratio_vs_local'])}"
        )
    lines.append(f"- whole benchmark: {results['bench_seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def _dominant_cost(key: str, results: dict) -> str:
    """For a missed target, the measurement of this run that says where its time goes."""
    if key == "embed_ratio_vs_torch":
        return (
            f"handing the rows from Spark to Python and back: {results['embed_exchange_seconds']:.2f} s with "
            f"no model at all, against {results['embed_seconds']:.2f} s for the whole embed step"
        )
    if key == "train_ratio_vs_single_process":
        processes, one = results["train_processes"], results["train_one_thread_samples_per_s"]
        reached = results["train_samples_per_s"][results["train_default_feeder"]]
        return (
            f"the {processes} one-thread training processes together reached {reached:.0f} samples/s, "
            f"{reached / (processes * one):.0%} of {processes} times one one-thread torch loop ({one:.0f}); "
            "the rest goes to DDP's lockstep and gradient exchange, the loop's per-step extras (gradient "
            "clipping, loss totals) and the Spark driver on the same cores. One process on all "
            f"{results['machine']['cores']} cores made {results['train_single_process_samples_per_s']:.0f}"
        )
    if key == "features_ratio_vs_pyarrow":
        phases = results["features_phase_seconds"]
        top = max(phases, key=phases.get)
        return (
            f"the phase '{top}': {phases[top]:.1f} s of the stage's {results['features_seconds']:.1f} s "
            f"(pyarrow's whole peer: {results['features_pyarrow_seconds']:.1f} s)"
        )
    return "see the details below"


def _fmt(values: dict, digits: int = 2) -> str:
    return ", ".join(
        f"{k}: {v:.{digits}f}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items()
    )
