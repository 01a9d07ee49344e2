"""What every benchmark shares: the run's sizes, the server and load-generator processes.

A server is a ``bench.servers`` subprocess (tm, tm without its journal, or the
do-nothing baseline); a load generator is a ``bench.loadgen`` subprocess whose
last line is its JSON result.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from bench import control
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    """Sizes and durations of one run."""

    scale: int = 1_000_000
    small_module: int = 1_000
    duration: float = 5.0
    concurrencies: tuple[int, ...] = (64, 256)
    progress_tasks: int = 10_000
    watchers: int = 1_000
    fanout_streams: int = 10_000
    tree_fanouts: tuple[int, ...] = (20, 20, 20, 12)
    burst_streams: int = 10_000
    shards: int = 2
    grow_rate: float = 10_000.0
    pause_read_rate: float = 200.0
    #: Rounds of each compared figure, alternating tm and baseline; the median
    #: is reported, as single windows on a shared machine vary by 10-30%.
    rounds: int = 3
    #: Rounds of status reads and the fan-out broadcast, the figures nearest
    #: their targets: more rounds settle which side of it they are on.
    close_rounds: int = 5
    #: The pauses figure's growth is read in this many segments, each followed
    #: by as long a window on the empty registry.
    pause_segments: int = 10


TINY = Config(
    scale=2_000,
    small_module=100,
    duration=0.5,
    concurrencies=(8, 16),
    progress_tasks=200,
    watchers=20,
    fanout_streams=100,
    tree_fanouts=(3, 3, 3, 3),
    burst_streams=200,
    grow_rate=2_000.0,
    pause_read_rate=100.0,
    rounds=2,
    close_rounds=2,
    pause_segments=2,
)


class Server:
    """A benchmark server subprocess (``bench.servers``)."""

    def __init__(self, kind: str, shards: int, data_dir: Path | None = None) -> None:
        self.kind = kind
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", kind, "--port-file", str(port_file),
             "--shards", str(shards),
             *(() if data_dir is None else ("--data-dir", str(data_dir)))],
            cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.01)
        self.target = f"127.0.0.1:{port_file.read_text()}"
        self.first_call_seconds = self._first_call()

    def _first_call(self) -> float:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.TaskManagerServiceStub(channel)
            while True:
                try:
                    stub.ListModules(pb.ListModulesRequest(), timeout=5)
                    return time.monotonic() - self.started_at
                except grpc.RpcError:
                    time.sleep(0.005)

    def control(self, name: str, **request: Any) -> dict[str, Any]:
        return control.call(self.target, name, **request)

    def cpu(self) -> float:
        """Server CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss(self) -> int:
        return int(self.control("rss", collect=True)["rss"])

    def stop(self) -> float:
        """SIGTERM; returns seconds until the process exited."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._dir.cleanup()
        return time.monotonic() - start


def host_cpu_ticks() -> tuple[int, int]:
    """This machine's CPU ticks so far: (busy, stolen by the hypervisor), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def loadgen(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed: {result.stderr[-2000:]}")
    value: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return value


class Watchers:
    """A load generator holding many WaitTask streams open."""

    def __init__(self, target: str, ids_file: Path, streams: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "watch", "--target", target,
             "--ids-file", str(ids_file), "--streams", str(streams)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self._out: IO[str] = self.proc.stdout
        self.ready: dict[str, Any] = json.loads(self._out.readline())

    def result(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self._out.readline())
        self.proc.wait(60)
        return value


def median(runs: list[dict[str, Any]], key: str) -> float:
    """The median of one value over the rounds of a figure."""
    return float(statistics.median(r[key] for r in runs))


def total_errors(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Failed calls by status code, summed over the rounds of a figure."""
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update(run["errors"])
    return dict(errors)


def round_ratios(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[float]:
    """The rate ratio (tm / baseline) of each alternating round, for the details."""
    return [round(o["rate"] / t["rate"], 3) for o, t in zip(ours, theirs, strict=True)]


def write_ids(directory: Path, name: str, ids: list[str]) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(ids))
    return path


def unary_on(server: Server, *args: str) -> dict[str, Any]:
    cpu0 = server.cpu()
    result = loadgen("unary", "--target", server.target, *args)
    result["server_cpu_s"] = server.cpu() - cpu0
    result["server_cpu_us_per_call"] = result["server_cpu_s"] / max(1, result["calls"]) * 1e6
    return result
