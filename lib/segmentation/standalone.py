"""A Spark standalone cluster on this machine (a master and workers bound to 127.0.0.1), started from
this environment's Spark: for the cluster tests, the benchmark's cluster run, and people who want to
try `spark-submit --master spark://...` before a real cluster.

    python -m segmentation.standalone up [--dir data/cluster] [--workers 2] [--cores 1] [--memory 2g]
    python -m segmentation.standalone down [--dir data/cluster]

(`make cluster-up` / `make cluster-down`.) `up` waits until every worker has registered with the master
and prints the master URL; its state (URL, process ids) is kept in `<dir>/cluster.json` for `down`.
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
        for pid in reversed(self.pids):
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_running(p) for p in self.pids):
            time.sleep(0.2)
        for pid in self.pids:
            _signal_group(pid, signal.SIGKILL)
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
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", default="data/cluster", help="state, logs and worker directories")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    directory = Path(args.dir).resolve()
    try:
        if args.action == "down":
            StandaloneCluster.from_state(directory).stop()
            print(f"stopped the cluster under {directory}")
            return 0
        if (directory / "cluster.json").is_file():
            raise ClusterError(f"a cluster is already up under {directory}: run `down` first")
        cluster = StandaloneCluster(directory, args.workers, args.cores, args.memory)
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
