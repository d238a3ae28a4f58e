"""The whole pipeline on a real Spark standalone cluster (a master and two 1-core workers), submitted
with the exact `spark-submit` command of README "Run on a cluster": Delta Lake's jars and the product's
wheel shipped with the job, executors running a Python that has the dependencies but not the product,
training as TorchDistributor barrier tasks on the executors (DDP over gloo across both workers)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.cli import main
from segmentation.registry import PIPELINE, pipeline_tables
from segmentation.storage import open_store
from segmentation.tables import PIPELINE_RUNS
from tests.conftest import REPO, make_config, python_with_dependencies_only

pytestmark = pytest.mark.slow

SETTINGS = (
    "generate.users=3000",
    "clustering.k=[4, 5]",
    "training.epochs=8",
    "training.batch_size=32",
    "training.tracking=false",
    # every stage runs on the cluster, the sequence encoder's too (its training through TorchDistributor)
    "clustering.candidates=[embedding, raw, idec, sequence]",
    "clustering.algorithms=[kmeans]",  # bisecting k-means runs in the shared lake's pipeline
    "sequence.epochs=3",
)


def readme_cluster_command() -> list[str]:
    """The command under README's cluster-submit marker, as a user would paste it."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- cluster-submit[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no cluster-submit command"
    return shlex.split(block.group(1).replace("\\\n", " "))


def test_readme_command_runs_the_pipeline_on_the_cluster(spark, standalone_cluster, wheel, tmp_path):
    cfg = make_config(tmp_path, *SETTINGS)
    overlay = [f"storage.root={tmp_path / 'lake'}", f"input.path={tmp_path / 'raw'}"]
    overlay += [f"report.path={tmp_path / 'reports'}", *SETTINGS]
    assert main(["generate", "--conf", str(REPO / "conf" / "local.yaml"), *_sets(overlay)]) == 0

    command = readme_cluster_command()
    assert command[0] == ".venv/bin/spark-submit" and "spark://HOST:PORT" in command
    shipped = wheel.with_name("deep_user_segmentation.zip")
    assert str(shipped.relative_to(REPO)) in command and shipped.read_bytes() == wheel.read_bytes()
    command = [standalone_cluster.master_url if a == "spark://HOST:PORT" else a for a in command]
    command[0] = str(Path(sys.executable).parent / "spark-submit")
    python = python_with_dependencies_only(tmp_path / "node-env")
    probe = subprocess.run([str(python), "-c", "import segmentation"], capture_output=True)
    assert probe.returncode != 0  # the nodes' Python has no product: it comes with the job
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python)}
    proc = subprocess.run(
        [*command, *_sets(overlay)], capture_output=True, text=True, timeout=1500, cwd=REPO, env=env
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_id = re.search(r"^run (\S+): (\d+) users in (\d+) segments", proc.stdout, re.M).group(1)

    store = open_store(spark, cfg.storage)
    runs = {r.stage: r for r in store.read(PIPELINE_RUNS).where(F.col("run_id") == run_id).collect()}
    assert {s: r.status for s, r in runs.items()} == {s.name: "success" for s in PIPELINE}
    for name in pipeline_tables():
        assert store.exists(name), name
        # written by delta-spark (the event tables' last commit records their privacy mode)
        operations = ("WRITE", "MERGE", "CREATE TABLE", "SET TBLPROPERTIES")
        assert store.history(name, 1)[0]["operation"] in operations, name

    # Nothing lost: every record read is kept, quarantined or a counted duplicate.
    ingest = runs["ingest"]
    assert ingest.rows_in == ingest.rows_out + ingest.rows_quarantined + ingest.rows_duplicate
    assert ingest.rows_in == spark.read.text(str(tmp_path / "raw")).count()

    # Every eligible generated user is segmented, no bot is.
    truth = spark.read.json(str(cfg.paths.truth))
    segments = store.read("user_segments")
    expected = truth.where(~F.col("is_bot") & (F.col("valid_events") >= 1)).select("user_id")
    assert expected.count() > 2900
    assert expected.join(segments, "user_id", "left_anti").count() == 0
    assert segments.join(truth.where("is_bot"), "user_id").count() == 0

    # Segments recover the planted ones (the local pipeline test's bound).
    cluster = json.loads(runs["cluster"].details)
    assert cluster["selected"]["ari_truth"] >= 0.75
    assert cluster["selected"]["ari_truth"] >= cluster["raw_baseline"]["ari_truth"] - 0.15

    # Training ran in two executor processes, one on each worker, with the shipped wheel's code.
    train = json.loads(runs["train"].details)
    processes = train["processes"]
    assert train["world_size"] == 2 and sorted(p["rank"] for p in processes) == [0, 1]
    assert all(p["pid"] != train["driver"]["pid"] for p in processes)
    workers = {
        i
        for p in processes
        for i in range(standalone_cluster.workers)
        if Path(p["cwd"]).is_relative_to(standalone_cluster.worker_dir(i))
    }
    assert workers == {0, 1}, processes
    assert all(shipped.name in p["package"] for p in processes), processes

    # The application ran on the cluster's executors (the driver runs no tasks in standalone mode).
    apps = standalone_cluster.status()["completedapps"] + standalone_cluster.status()["activeapps"]
    assert any(a["name"] == "segmentation" for a in apps)
    for i in range(standalone_cluster.workers):
        assert list(standalone_cluster.worker_dir(i).glob("app-*/*/stderr")), i


def _sets(items) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


def test_readme_cluster_command_is_what_the_venv_wrapper_would_add():
    """The venv's spark-submit adds the same jars and settings to a bare command, so both README forms
    load the same Delta."""
    command = readme_cluster_command()
    jars = command[command.index("--jars") + 1].split(",")
    assert sorted(Path(j).name for j in jars) == ["delta-spark_2.13-4.0.1.jar", "delta-storage-4.0.1.jar"]
    wrapper = (REPO / "scripts" / "spark-submit.sh").read_text()
    for setting in (a for a in command if a.startswith("spark.sql.")):
        assert setting in wrapper, setting


def test_bare_venv_spark_submit_adds_delta_and_takes_spark_settings_from_the_config(tmp_path):
    """`.venv/bin/spark-submit --master local[1] jobs/sql.py ...` with no Delta flags gets Delta, and
    the YAML's spark.conf reaches the session spark-submit started."""
    submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [
            str(submit),
            "--master",
            "local[1]",
            "--verbose",
            str(REPO / "jobs" / "sql.py"),
            "--conf",
            str(REPO / "conf" / "local.yaml"),
            "--set",
            f"storage.root={tmp_path}",
            "--set",
            "spark.conf={spark.sql.shuffle.partitions: 7, spark.executor.memory: 1200m}",
            "--format",
            "json",
            "SELECT 1 AS one, '${spark.sql.shuffle.partitions}' AS partitions, '${spark.executor.memory}' AS memory",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "one": 1,
        "partitions": "7",
        "memory": "1200m",
    }
    verbose = proc.stdout + proc.stderr
    assert "delta-spark_2.13-4.0.1.jar" in verbose and "DeltaSparkSessionExtension" in verbose
    assert "Delta Lake loaded" in verbose  # spark-submit merges the driver's stderr into its stdout
