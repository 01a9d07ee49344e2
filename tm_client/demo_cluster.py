"""A cluster demo: three local tm nodes on one SQLite store, and a rolling upgrade over them.

``make demo-cluster`` (or ``python -m tm_client.demo_cluster``) starts three
``tm-server`` processes that share a SQLite file, creates a cluster task
through the first, and upgrades the nodes one after the other: each node's
worker reports a child task through its own node, and the last node's upgrade
fails. It then shows the nodes and the cluster task as every node answers for
it. With ``--keep`` the nodes stay up until Ctrl-C, for ``tm`` and grpcurl.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from uuid import UUID

from ._client import TaskManagerClient
from ._producer import Producer

#: What upgrading one node takes, step by step.
STEPS = ("drain", "stop", "install", "start")
#: The node whose upgrade fails (the last one), and why.
FAILURE = "the new version did not start: port 9042 is in use"


class LocalCluster:
    """``count`` tm-server processes on 127.0.0.1, sharing ``store`` (``folder/cluster.db``).

    Each node's data directory is ``folder/NAME``; the folder goes with the nodes.
    """

    def __init__(
        self, count: int = 3, folder: Path | None = None, store: str | None = None
    ) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="tm-demo-cluster-"))
        self.store = store or f"sqlite://{self.folder / 'cluster.db'}"
        self.names = [f"n{i}" for i in range(1, count + 1)]
        self.targets: dict[str, str] = {}
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> LocalCluster:
        try:
            for name in self.names:
                self.targets[name] = self._start(name)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self, name: str) -> str:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tm_server", "--node", name, "--address", "127.0.0.1:0",
                # Each node's dashboard and REST API on a port of its own.
                "--http-address", "127.0.0.1:0",
                "--store", self.store, "--data-dir", str(self.folder / name), "--shards", "2",
                "--task-ttl-in-seconds", "3600", "--user-task-ttl-in-seconds", "3600",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self._procs.append(proc)
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            dashboard = re.search(r"http on (https?://[\d.]+:\d+/)", line)
            if dashboard:
                print(f"node {name}: dashboard at {dashboard.group(1)}", flush=True)
            found = re.search(r"listening on ([\d.]+:\d+)", line)
            if found:
                # Keep reading its log, so the node never blocks on a full pipe.
                threading.Thread(target=proc.stderr.read, daemon=True).start()
                return found.group(1)
        raise RuntimeError(f"node {name} did not start:\n{''.join(lines)}")

    def stop(self) -> None:
        """Stops the nodes (they leave the cluster cleanly) and removes the folder."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class RollingResult:
    """The cluster task, and each node's child task, by node name."""

    root: UUID
    children: dict[str, UUID]


def run_rolling(targets: dict[str, str], *, delay: float = 0.2) -> RollingResult:
    """Upgrades the nodes one after the other; the last one's upgrade fails.

    The cluster task is created through the first node; each node's child is
    reported through that node by a worker of its own, as a real rolling
    operation would run.
    """
    names = list(targets)
    with Producer(targets[names[0]], module="upgrade") as coordinator:
        root = coordinator.create_task(
            "rolling_upgrade", scope="cluster", entity="tm 2.0", cluster=True,
            user_task=True, abortable=True, progress_units="nodes", total=len(names),
        )  # fmt: skip
        print(f"cluster task {root.id}: rolling upgrade over {', '.join(names)}")
        children: dict[str, UUID] = {}
        failed: list[str] = []
        for done, name in enumerate(names, start=1):
            with Producer(targets[name], module="upgrade") as worker:
                child = worker.create_task(
                    "upgrade", scope="node", entity=name, parent=root.id,
                    progress_units="steps", total=len(STEPS),
                )  # fmt: skip
                children[name] = child.id
                error = None
                for step, what in enumerate(STEPS, start=1):
                    time.sleep(delay)
                    if name == names[-1] and what == "start":
                        error = f"{name}: {FAILURE}"
                        break
                    child.progress(step)
                child.finish(error)
                print(f"  {name}: {'failed: ' + error if error else 'upgraded'}")
                if error:
                    failed.append(name)
            root.progress(done)
        root.finish(
            f"{len(failed)} of {len(names)} nodes failed to upgrade: {', '.join(failed)}"
            if failed
            else None
        )
    return RollingResult(root.id, children)


def show(targets: dict[str, str], result: RollingResult) -> None:
    """Prints the nodes, and the cluster task as each node answers for it."""
    names = list(targets)
    with TaskManagerClient(targets[names[0]]) as client:
        print("\nnodes:")
        for node in client.list_nodes():
            print(f"  {node.name:4} {node.address:21} {'up' if node.alive else 'down'}")
    print(f"\ncluster task {result.root}, from every node:")
    for name in names:
        with TaskManagerClient(targets[name]) as client:
            status = client.get_status(result.root)
            kids = ", ".join(f"{c.node}" for c in status.children)
            print(f"  via {name}: {status.state.value} ({status.error}); children on {kids}")
    with TaskManagerClient(targets[names[-1]]) as client:
        print("\nits tree (GetTaskStatusRecursive):")
        for status in client.get_status_recursive(result.root):
            where = status.node or "cluster"
            line = f"  {status.type:16} {status.entity:7} {status.state.value:7} on {where}"
            print(line + (f"  {status.error}" if status.error else ""))


def main(argv: list[str] | None = None) -> int:
    """``python -m tm_client.demo_cluster``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds a step takes")
    parser.add_argument("--keep", action="store_true", help="keep the nodes up until Ctrl-C")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("a cluster demo needs at least 2 nodes")
    with LocalCluster(args.nodes) as cluster:
        print("started " + ", ".join(f"{n} on {t}" for n, t in cluster.targets.items()))
        result = run_rolling(cluster.targets, delay=args.delay)
        show(cluster.targets, result)
        if args.keep:
            first = next(iter(cluster.targets.values()))
            print(f"\nthe nodes stay up; try: tm --target {first} cluster nodes  (Ctrl-C ends)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
