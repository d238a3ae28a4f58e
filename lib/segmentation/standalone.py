"""A Spark standalone cluster on this machine (a master and workers bound to 127.0.0.1), started from
this environment's Spark: for the cluster tests, the benchmark's cluster run, and people who want to
try `spark-submit --master spark://...` before a real cluster. Also a local Spark Connect server with
Delta Lake, for running the product as a Spark Connect client (`spark.remote`) as on Databricks
serverless.

    python -m segmentation.standalone up [--dir data/cluster] [--workers 2] [--cores 1] [--memory 2g]
    python -m segmentation.standalone down [--dir data/cluster]
    python -m segmentation.standalone connect-up [--dir data/connect] [--cores 2]
    python -m segmentation.standalone connect-down [--dir data/connect]

(`make cluster-up` / `make cluster-down`, `make connect-up` / `make connect-down`.) `up` waits until
every worker has registered with the master and prints the master URL; its state (URL, process ids) is
kept in `<dir>/cluster.json` for `down` (`connect-up`: until the server listens, `<dir>/connect.json`).
Every daemon runs in its own process group, so `down` (or the owner's exit) stops workers together with
the executors they started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from segmentation.errors import SegmentationError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class ClusterError(SegmentationError):
    """The standalone cluster could not be started or reached."""


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class StandaloneCluster:
    """A master and `workers` workers of `cores` cores and `memory` each."""

    directory: Path
    workers: int = 2
    cores: int = 1
    memory: str = "2g"
    master_port: int = 0
    webui_port: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def state_file(self) -> Path:
        return self.directory / "cluster.json"

    def worker_dir(self, index: int) -> Path:
        """Where worker `index` runs its executors (each executor's working directory is below it)."""
        return self.directory / f"worker-{index}"

    def start(self, timeout: float = 180) -> str:
        """Start the master and the workers; return the master URL once every worker is alive."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.master_port = self.master_port or free_port()
        self.webui_port = self.webui_port or free_port()
        self._daemon(
            "master",
            "org.apache.spark.deploy.master.Master",
            ["--host", HOST, "--port", str(self.master_port), "--webui-port", str(self.webui_port)],
        )
        for i in range(self.workers):
            self.worker_dir(i).mkdir(parents=True, exist_ok=True)
            self._daemon(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                [
                    "--host",
                    HOST,
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--work-dir",
                    str(self.worker_dir(i)),
                    "--webui-port",
                    str(free_port()),
                    self.master_url,
                ],
            )
        self.state_file.write_text(json.dumps(self._state(), indent=2))
        try:
            self.wait_for_workers(timeout)
        except ClusterError:
            self.stop()
            raise
        log.info("standalone cluster up at %s with %d workers", self.master_url, self.workers)
        return self.master_url

    def _daemon(self, name: str, main_class: str, args: list[str]) -> None:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOG_DIR=str(self.directory / "logs"),
            SPARK_LOCAL_DIRS=str(self.directory / "tmp" / name),
            # Executors start Python workers with this interpreter unless a job says otherwise.
            PYSPARK_PYTHON=env.get("PYSPARK_PYTHON", sys.executable),
        )
        (self.directory / "logs").mkdir(exist_ok=True)
        out = (self.directory / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), main_class, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stopping it stops its executors too
        )
        out.close()
        self.pids.append(process.pid)

    def status(self) -> dict:
        """The master's JSON status (workers, applications)."""
        url = f"http://{HOST}:{self.webui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.status().get("workers", []) if w.get("state") == "ALIVE")
        except OSError:
            return 0

    def wait_for_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive_workers() >= self.workers:
                return
            dead = [pid for pid in self.pids if not _running(pid)]
            if dead:
                raise ClusterError(
                    f"a Spark daemon exited while starting; see the logs under {self.directory / 'logs'}"
                )
            time.sleep(0.5)
        raise ClusterError(
            f"{self.alive_workers()} of {self.workers} workers registered with {self.master_url} within "
            f"{timeout:.0f} s; see the logs under {self.directory / 'logs'}"
        )

    def stop(self, grace: float = 20) -> None:
        """Stop the workers (and their executors), then the master."""
        _stop_groups(self.pids, grace)
        self.pids = []
        self.state_file.unlink(missing_ok=True)

    def _state(self) -> dict:
        return {
            "master_url": self.master_url,
            "webui_port": self.webui_port,
            "master_port": self.master_port,
            "pids": self.pids,
            "workers": self.workers,
        }

    @classmethod
    def from_state(cls, directory: Path) -> StandaloneCluster:
        state_file = directory / "cluster.json"
        if not state_file.is_file():
            raise ClusterError(f"no cluster state under {directory}: nothing started there")
        state = json.loads(state_file.read_text())
        return cls(
            directory,
            workers=state["workers"],
            master_port=state["master_port"],
            webui_port=state["webui_port"],
            pids=state["pids"],
        )


@dataclass
class ConnectServer:
    """A Spark Connect server (`SparkConnectServer` under spark-submit, local[`cores`]) with Delta Lake's
    jars, extension and catalog, listening on 127.0.0.1:`port`. The product's local session settings
    apply to its session; the clients' Python UDFs run in this environment's interpreter."""

    directory: Path
    cores: int = 2
    port: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"sc://{HOST}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.directory / "connect.json"

    def start(self, timeout: float = 180) -> str:
        """Start the server; return its sc:// URL once it accepts connections."""
        from segmentation.spark import delta_settings, local_defaults

        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        self.port = self.port or free_port()
        settings = {
            **local_defaults(self.cores),
            **delta_settings({}),
            "spark.connect.grpc.binding.address": HOST,
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.sql.warehouse.dir": str(self.directory / "warehouse"),
            "spark.local.dir": str(self.directory / "tmp"),
        }
        command = [
            str(spark_home() / "bin" / "spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--master",
            f"local[{self.cores}]",
            "--name",
            "segmentation connect server",
        ]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        env = dict(os.environ, SPARK_HOME=str(spark_home()))
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        env.pop("SPARK_REMOTE", None)  # the server is not a client
        out = (self.directory / "logs" / "connect-server.log").open("ab")
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.pids = [process.pid]
        self.state_file.write_text(json.dumps({"url": self.url, "port": self.port, "pids": self.pids}))
        try:
            self._wait(timeout)
        except ClusterError:
            self.stop()
            raise
        log.info("Spark Connect server up at %s", self.url)
        return self.url

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _running(self.pids[0]):
                raise ClusterError(
                    f"the Spark Connect server exited while starting; see {self.directory / 'logs'}"
                )
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex((HOST, self.port)) == 0:
                    return
            time.sleep(0.5)
        raise ClusterError(
            f"the Spark Connect server did not listen on {self.url} within {timeout:.0f} s; "
            f"see {self.directory / 'logs'}"
        )

    def stop(self, grace: float = 20) -> None:
        _stop_groups(self.pids, grace)
        self.pids = []
        self.state_file.unlink(missing_ok=True)

    @classmethod
    def from_state(cls, directory: Path) -> ConnectServer:
        state_file = directory / "connect.json"
        if not state_file.is_file():
            raise ClusterError(f"no Spark Connect server state under {directory}: nothing started there")
        state = json.loads(state_file.read_text())
        return cls(directory, port=state["port"], pids=state["pids"])


def _stop_groups(pids: list[int], grace: float) -> None:
    """TERM each process group (last started first), then KILL what is left after `grace` seconds."""
    for pid in reversed(pids):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children, so they do not linger as zombies
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another command): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segmentation.standalone", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=("up", "down", "connect-up", "connect-down"))
    parser.add_argument(
        "--dir", default=None, help="state, logs and worker directories (data/cluster; data/connect)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cores", type=int, default=None, help="cores per worker (1); of the Connect server (2)"
    )
    parser.add_argument("--memory", default="2g", help="memory per worker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    connect = args.action.startswith("connect")
    directory = Path(args.dir or ("data/connect" if connect else "data/cluster")).resolve()
    try:
        if args.action == "connect-down":
            ConnectServer.from_state(directory).stop()
            print(f"stopped the Spark Connect server under {directory}")
            return 0
        if args.action == "connect-up":
            if (directory / "connect.json").is_file():
                raise ClusterError(
                    f"a Spark Connect server is already up under {directory}: run `connect-down` first"
                )
            url = ConnectServer(directory, cores=args.cores or 2).start()
            print(url)
            print(f"use: segment run --conf conf/local.yaml --set spark.remote={url}", file=sys.stderr)
            return 0
        if args.action == "down":
            StandaloneCluster.from_state(directory).stop()
            print(f"stopped the cluster under {directory}")
            return 0
        if (directory / "cluster.json").is_file():
            raise ClusterError(f"a cluster is already up under {directory}: run `down` first")
        cluster = StandaloneCluster(directory, args.workers, args.cores or 1, args.memory)
        url = cluster.start()  # the daemons outlive this command (own sessions); `down` stops them
        print(url)
        print(
            f"submit: .venv/bin/spark-submit --master {url} jobs/run.py --conf conf/cluster.yaml\n"
            f"status: http://{HOST}:{cluster.webui_port}   stop: make cluster-down",
            file=sys.stderr,
        )
        return 0
    except SegmentationError as exc:
        print(f"standalone: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
