"""The product as a Spark Connect client (`spark.remote` / SPARK_REMOTE), as on Databricks serverless:
against a local Spark Connect server with Delta Lake (`segmentation.standalone.ConnectServer`, a
separate JVM; this process holds no Connect session, since pyspark keeps one kind of session per
process). The table layer's contract tests, and `segment sql`'s refusal of statements that write, run in
a pytest process of their own whose session is a Connect client; k-means from one start reaches the classic MLlib refinement's centres and partition;
the pipeline runs end to end through the CLI (every stage, the sequence encoder's included), then a
stream of a second day, assign, check-drift, SQL and maintenance."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml.clustering import KMeans
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from segmentation.cluster import kmeans
from segmentation.standalone import ConnectServer
from segmentation.storage import open_store
from segmentation.tables import EVENTS_QUARANTINE, PIPELINE_RUNS, USER_FEATURES, USER_SEGMENTS
from tests.conftest import REMOTE_ENV, REPO, cli_args, make_config
from tests.integration.segment_checks import day2_logs

# `make test-connect`: outside `make test` (CI) for its time, ~10 minutes of a suite past CI's limit
pytestmark = [pytest.mark.slow, pytest.mark.connect]

SETTINGS = (
    "generate.users=1000",
    "clustering.k=[4, 5]",
    "training.epochs=4",
    "clustering.candidates=[embedding, raw, idec, sequence]",  # every stage runs
    "clustering.algorithms=[kmeans]",  # bisecting k-means runs in the shared lake's pipeline
    "sequence.epochs=2",
    # upkeep over Connect on the table the stream and assign wrote last (test_engines maintains all)
    "maintain.tables=[user_segments]",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    connect = ConnectServer(tmp_path_factory.mktemp("connect"), cores=2)
    connect.start()
    try:
        yield connect
    finally:
        connect.stop()


def remote_env(server: ConnectServer) -> dict[str, str]:
    return {**os.environ, "SPARK_REMOTE": server.url}


def segment(server: ConnectServer, *args: str) -> subprocess.CompletedProcess:
    """The `segment` command as a Spark Connect client of `server`."""
    command = [str(Path(sys.executable).parent / "segment"), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=900, cwd=REPO, env=remote_env(server)
    )


def summary(done: subprocess.CompletedProcess) -> dict:
    """The JSON summary a stage command prints last."""
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_table_layer_and_sql_guard_keep_their_contracts_over_spark_connect(server, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'pytest'}",
            "tests/unit/storage/test_contract.py",
            "tests/unit/test_cli.py::test_sql_refuses_statements_that_write_and_changes_nothing",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, REMOTE_ENV: server.url},
    )
    assert done.returncode == 0, done.stdout[-4000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 56 and "failed" not in done.stdout.splitlines()[-1]  # both engines', and sql's


CONNECT_KMEANS = """
import sys
import numpy as np
from pyspark.ml.clustering import KMeans
from pyspark.sql import SparkSession
from segmentation.cluster import kmeans
from tests.integration.test_connect import kmeans_input

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
frame, start = kmeans_input(spark)
model = kmeans.refine(frame, start, KMeans(k=len(start), seed=3, maxIter=30, featuresCol="vector",
                                           predictionCol="segment_id"))
labels = [r.segment_id for r in model.transform(frame).orderBy("i").select("segment_id").collect()]
np.savez(sys.argv[2], centres=np.array(model.clusterCenters()), labels=np.array(labels))
"""


def kmeans_input(spark):
    """Four overlapping groups in 6 dimensions and a start of four of their points, as a frame."""
    rng = np.random.default_rng(11)
    points = np.concatenate([rng.normal(loc=m, size=(500, 6)) for m in (0.0, 1.2, -2.5, 4.0)])
    start = points[rng.choice(len(points), 4, replace=False)]
    rows = [(i, Vectors.dense(p)) for i, p in enumerate(points)]
    return spark.createDataFrame(rows, ["i", "vector"]).repartition(2, "i").cache(), start


def test_k_means_over_spark_connect_reaches_the_classic_refinement(server, spark, tmp_path):
    out = tmp_path / "connect.npz"
    done = subprocess.run(
        [sys.executable, "-c", CONNECT_KMEANS, server.url, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    remote = np.load(out)

    frame, start = kmeans_input(spark)
    template = KMeans(k=4, seed=3, maxIter=30, featuresCol="vector", predictionCol="segment_id")
    model = kmeans.refine(frame, start, template)
    labels = [r.segment_id for r in model.transform(frame).orderBy("i").select("segment_id").collect()]
    assert model.summary.numIter > 2  # iterations did move the start
    # The same centres in the same order (so the same segment numbers), the same partition.
    assert np.allclose(remote["centres"], np.array(model.clusterCenters()), rtol=0, atol=1e-9)
    assert remote["labels"].tolist() == labels


def test_the_pipeline_streams_and_serves_sql_over_spark_connect(server, spark, tmp_path):
    args = cli_args(tmp_path, *SETTINGS)
    assert segment(server, "generate", *args).returncode == 0
    done = segment(server, "run", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Spark Connect, server master local[2]; Delta Lake loaded" in done.stderr
    run_id = re.search(r"^run (\S+): (\d+) users in (\d+) segments", done.stdout, re.M).group(1)

    cfg = make_config(tmp_path, *SETTINGS)
    store = open_store(spark, cfg.storage)  # this process reads what the server wrote
    runs = {r.stage: r for r in store.read(PIPELINE_RUNS).where(F.col("run_id") == run_id).collect()}
    assert {"ingest", "features", "train", "embed", "sequence", "cluster", "recommend", "report"} <= set(runs)
    assert json.loads(runs["sequence"].details)["skipped"] is None
    assert {r.status for r in runs.values()} == {"success"}
    ingest = runs["ingest"]
    assert ingest.rows_in == ingest.rows_out + ingest.rows_quarantined + ingest.rows_duplicate
    assert ingest.rows_in == spark.read.text(str(tmp_path / "raw")).count()
    users = store.read(USER_FEATURES).select("user_id")
    segments = store.read(USER_SEGMENTS)
    assert segments.count() == users.count() == users.join(segments, "user_id").count()
    cluster = json.loads(runs["cluster"].details)
    assert cluster["selected"]["ari_truth"] >= 0.75  # raw k-means reaches about 0.95 here
    assert cluster["registered_model"]  # the segmenter went to MLflow's registry as champion
    assert Path(re.search(r"^report: (.+)$", done.stdout, re.M).group(1)).is_file()

    # A second day through `segment stream`: its micro-batches run in the server's Python workers.
    before = {r.user_id: r.segment_id for r in segments.collect()}  # 1k users: small
    returning, sources = sorted(before)[:10], sorted(before)[10:16]
    day2 = tmp_path / "day2"
    day2_logs(spark, store, returning, sources, day2)
    (day2 / "repeats-a-key.json").write_text('{"user_id": "x", "user_id": "y", "event_type": "view"}\n')
    stream_args = [*args, "--set", f"input.path={day2}", "--set", "stream.trigger=available_now"]
    streamed = summary(segment(server, "stream", *stream_args))
    assert streamed["batches"] >= 1 and streamed["files"] == 2
    assert streamed["users_written"] == len(returning) + len(sources)
    assert streamed["rows_in"] == (
        streamed["rows_out"] + streamed["rows_quarantined"] + streamed["rows_duplicate"]
    )
    repeated = store.read(EVENTS_QUARANTINE).where(F.col("source_file").endswith("repeats-a-key.json"))
    assert [r.reason for r in repeated.collect()] == ["malformed_record"]
    after = store.read(USER_SEGMENTS).where(F.col("assigned_by") == "assign")
    assert {r.user_id for r in after.collect()} == set(returning) | {f"new-{u}" for u in sources}
    again = summary(segment(server, "assign", *args))  # the same users, nothing new to write
    assert (again["users_scored"], again["users_written"]) == (len(returning) + len(sources), 0)
    drift = segment(server, "check-drift", *args)
    assert drift.returncode == 0, drift.stderr[-2000:]
    assert set(json.loads(drift.stdout.strip().splitlines()[-1])) == {"retrain", "why"}

    # SQL: queries run, statements that write are refused (the plan read back from EXPLAIN).
    query = "SELECT count(*) AS n FROM user_segments"
    counted = segment(server, "sql", *args, "--format", "json", query)
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert json.loads(counted.stdout.strip().splitlines()[-1]) == {"n": len(before) + len(sources)}
    dropped = segment(server, "sql", *args, "DROP TABLE user_segments")
    assert dropped.returncode != 0 and "segment sql runs queries only" in dropped.stderr
    assert store.exists(USER_SEGMENTS)

    maintained = summary(segment(server, "maintain", *args))
    assert maintained["files_after"] <= maintained["files_before"]
    assert store.read(USER_SEGMENTS).count() == len(before) + len(sources)
