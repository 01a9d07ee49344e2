"""Cluster benchmarks: real ``tm-server`` nodes sharing a store.

Two figures, as the cluster issue asks: the status of a cluster task whose
children are spread over three nodes against the status of a regular task
with as many children on one node (the gather's cost, as a ratio of p50
latencies), and the time from ``FinishTask`` on one node to the final message
of a ``WaitTask`` stream on another, for each store (how fast a change
crosses the cluster: the SQLite change log's poll against PostgreSQL's
LISTEN/NOTIFY).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Figure
from tm_client import Producer, TaskManagerClient
from tm_client.demo_cluster import LocalCluster
from tm_server.testing.postgres import Postgres, binaries


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latencies(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "samples": len(values),
    }


def _time_reads(target: str, task_id: Any, reads: int) -> list[float]:
    with TaskManagerClient(target, timeout=30) as client:
        client.get_status(task_id)  # warm the channel
        out = []
        for _ in range(reads):
            t0 = time.perf_counter()
            client.get_status(task_id)
            out.append(time.perf_counter() - t0)
        return out


def bench_cluster_status(*, per_node: int, reads: int, store: str) -> Figure:
    """A cluster task with ``per_node`` children on each of 3 nodes, against a regular task."""
    with LocalCluster(3, store=store) as nodes:
        targets = list(nodes.targets.values())
        producers = [Producer(t, module="bench", session=False) for t in targets]
        try:
            root = producers[0].create_task("rolling", cluster=True)
            for producer in producers:
                for _ in range(per_node):
                    producer.create_task("step", parent=root.id)
            regular = producers[0].create_task("rolling")
            for _ in range(per_node * 3):
                producers[0].create_task("step", parent=regular.id)
            with TaskManagerClient(targets[1]) as client:
                status = client.get_status(root.id)
                assert len(status.children) == per_node * 3, "children missing from the gather"
            cluster = _time_reads(targets[1], root.id, reads)
            local = _time_reads(targets[0], regular.id, reads)
        finally:
            for producer in producers:
                producer.close()
    ours, theirs = _latencies(cluster), _latencies(local)
    ratio = ours["p50_ms"] / theirs["p50_ms"]
    return Figure(
        "cluster task status",
        f"GetTaskStatus of a cluster task with {per_node:,} children on each of 3 nodes "
        f"(asked of a node that holds a third of them), against a regular task with "
        f"{per_node * 3:,} children on one node; {reads} sequential reads each",
        "ms p50",
        ours["p50_ms"],
        theirs["p50_ms"],
        ratio,
        "reported (ratio of p50s)",
        None,
        {"cluster": ours, "regular": theirs},
    )


def bench_wait_latency(*, label: str, store: str, samples: int, target_ms: float) -> Figure:
    """From FinishTask on one node to the final WaitTask message on another."""
    with LocalCluster(2, store=store) as nodes:
        targets = list(nodes.targets.values())
        producer = Producer(targets[0], module="bench", session=False)
        client = TaskManagerClient(targets[1], timeout=30)
        waits: list[float] = []
        try:
            for _ in range(samples):
                task = producer.create_task("upgrade", cluster=True)
                stream = client.watch(task.id, timeout=30)
                next(stream)  # the stream is open and the first status read
                t0 = time.perf_counter()
                task.finish()
                last = None
                for last in stream:  # noqa: B007 - the final message is the point
                    pass
                waits.append(time.perf_counter() - t0)
                assert last is not None and last.state.is_final
        finally:
            client.close()
            producer.close()
    lat = _latencies(waits)
    return Figure(
        f"finish-to-wait latency ({label})",
        f"FinishTask of a cluster task on one node to the final WaitTask message on another, "
        f"{label} store; {samples} samples",
        "ms p99",
        lat["p99_ms"],
        None,
        None,
        f"p99 <= {target_ms:g} ms",
        lat["p99_ms"] <= target_ms,
        lat,
    )


def cluster_figures(*, tiny: bool) -> list[Figure]:
    """Every cluster figure, on SQLite and (when its binaries are here) PostgreSQL."""
    folder = Path(tempfile.mkdtemp(prefix="tm-bench-store-"))
    per_node, reads, samples = (20, 20, 10) if tiny else (300, 300, 300)
    figures: list[Figure] = []
    try:
        sqlite = f"sqlite://{folder / 'cluster.db'}"
        figures.append(bench_cluster_status(per_node=per_node, reads=reads, store=sqlite))
        figures.append(
            bench_wait_latency(
                label="SQLite", store=f"sqlite://{folder / 'wait.db'}",
                samples=samples, target_ms=200,
            )
        )  # fmt: skip
        if binaries() is not None:
            pg = Postgres()
            try:
                figures.append(
                    bench_wait_latency(
                        label="PostgreSQL", store=pg.url, samples=samples, target_ms=50
                    )
                )
            finally:
                pg.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return figures
