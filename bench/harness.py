"""What every benchmark shares: the run's sizes, the server and load-generator processes.

A server is a ``bench.servers`` subprocess (tm, tm without its journal, or the
do-nothing baseline); a load generator is a ``bench.loadgen`` subprocess whose
last line is its JSON result. A server given ``Security`` serves TLS (tm also
checks the token of every call against a tokens file) and its clients connect
with TLS and send the token. A tm server given ``metrics_address`` serves its
Prometheus metrics there (``metrics_url``); given ``http_address``, its HTTP
side there (``http_url``).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from bench import control
from tests.certs import make_certs
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_server.security.tokens import hash_token, new_token

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
    #: Rounds of status reads, progress reports and the fan-out broadcast, the
    #: figures nearest their targets: more rounds settle which side of it they are on.
    close_rounds: int = 5
    #: The pauses figure's growth is read in this many segments, each followed
    #: by as long a window on the empty registry.
    pause_segments: int = 10
    #: Running tasks on the tm server of the TLS-and-token figures.
    tls_tasks: int = 100_000
    #: WatchTasks streams on the module while producers report progress.
    module_watchers: int = 100
    #: Idle WatchTasks streams whose memory is measured, on tm and the baseline.
    watch_memory_streams: int = 10_000
    #: Running tasks on the tm server with metrics on, and how often it is scraped.
    metrics_tasks: int = 100_000
    metrics_scrape_interval: float = 1.0


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
    tls_tasks=500,
    module_watchers=10,
    watch_memory_streams=100,
    metrics_tasks=500,
    metrics_scrape_interval=0.2,
)


@dataclass(frozen=True)
class Security:
    """A test CA, the server certificate it signed, and a tokens file with one operator token."""

    ca: Path
    cert: Path
    key: Path
    tokens: Path
    token_file: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def client_args(self) -> tuple[str, ...]:
        """The load generator's flags: TLS trusting the CA, the token on every call."""
        return ("--tls-ca", str(self.ca), "--token-file", str(self.token_file))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())


def make_security(directory: Path) -> Security:
    """Certificates (``tests.certs``: valid for 127.0.0.1) and an operator's token, in a folder."""
    certs = make_certs(directory)
    token = new_token()
    token_file = directory / "token"
    token_file.write_text(token + "\n")
    tokens = directory / "tokens.toml"
    tokens.write_text(
        f'[[principal]]\nname = "bench"\nroles = ["operator"]\ntokens = ["{hash_token(token)}"]\n'
    )
    return Security(certs.ca, certs.server_cert, certs.server_key, tokens, token_file)


class Server:
    """A benchmark server subprocess (``bench.servers``).

    With ``security`` it serves TLS (tm also checks every caller's token
    against the tokens file; the baseline ignores the metadata), and its
    control channel is a plaintext port of its own (``control_target``).
    """

    def __init__(
        self,
        kind: str,
        shards: int,
        data_dir: Path | None = None,
        security: Security | None = None,
        metrics_address: str | None = None,
        watch_interval: float | None = None,
        http_address: str | None = None,
    ) -> None:
        self.kind = kind
        self.security = security
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        secured: tuple[str, ...] = ()
        if security is not None:
            secured = ("--tls-cert", str(security.cert), "--tls-key", str(security.key))
            if kind != "baseline":
                secured += ("--tls-peer-ca", str(security.ca), "--tokens", str(security.tokens))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", kind, "--port-file", str(port_file),
             "--shards", str(shards),
             *(() if data_dir is None else ("--data-dir", str(data_dir))), *secured,
             *(() if metrics_address is None else ("--metrics-address", metrics_address)),
             *(() if watch_interval is None else ("--watch-interval", str(watch_interval))),
             *(() if http_address is None else ("--http-address", http_address))],
            cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.01)
        ports = port_file.read_text().split()
        self.target = f"127.0.0.1:{ports[0]}"
        self.control_target = f"127.0.0.1:{ports[-1]}"
        self.first_call_seconds = self._first_call()
        self.metrics_url = ""
        if metrics_address is not None:
            host = metrics_address.rsplit(":", 1)[0]
            self.metrics_url = f"http://{host}:{self.control('metrics_port')['port']}/metrics"
        self.http_url = ""
        if http_address is not None:
            host = http_address.rsplit(":", 1)[0]
            self.http_url = f"http://{host}:{self.control('http_port')['port']}"

    def _channel(self) -> grpc.Channel:
        if self.security is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.security.channel_credentials())

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        if self.security is None:
            return None
        return (("authorization", f"Bearer {self.security.token}"),)

    def _first_call(self) -> float:
        with self._channel() as channel:
            stub = pb_grpc.TaskManagerServiceStub(channel)
            while True:
                try:
                    stub.ListModules(pb.ListModulesRequest(), timeout=5, metadata=self._metadata())
                    return time.monotonic() - self.started_at
                except grpc.RpcError:
                    time.sleep(0.005)

    def refused_without_token(self) -> str:
        """The status code of a call over TLS without the token ("OK" if it was served)."""
        with self._channel() as channel:
            stub = pb_grpc.TaskManagerServiceStub(channel)
            try:
                stub.ListModules(pb.ListModulesRequest(), timeout=5)
            except grpc.RpcError as exc:
                return str(exc.code().name)
            return "OK"

    def client_args(self) -> tuple[str, ...]:
        """The load generator's flags for this server: TLS and the token, when it has them."""
        return () if self.security is None else self.security.client_args()

    def control(self, name: str, **request: Any) -> dict[str, Any]:
        return control.call(self.control_target, name, **request)

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
    return run_tool("bench.loadgen", *args)


def run_tool(module: str, *args: str) -> dict[str, Any]:
    """Runs a load generator module to its end; the JSON object of its last line."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed: {result.stderr[-2000:]}")
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


class WatcherProcess:
    """A load generator process holding watch streams on a module.

    Each stream runs until every id of the ids file reached a final state in
    its events; ``ready`` is the line printed once every stream had its first
    response (or failed), ``result()`` the one printed once all ended.
    """

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *command], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self._out: IO[str] = self.proc.stdout
        self.ready: dict[str, Any] = json.loads(self._out.readline())

    def cpu(self) -> float:
        """The watchers' CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def result(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self._out.readline())
        # The CPU until the result (its process, not yet reaped, still has it).
        self.final_cpu = self.cpu()
        self.proc.wait(60)
        return value


class ModuleWatchers(WatcherProcess):
    """WatchTasks streams on a module (``loadgen modwatch``)."""

    def __init__(
        self, target: str, module: str, ids_file: Path, streams: int, end_timeout: float = 300
    ) -> None:
        super().__init__(
            ["bench.loadgen", "modwatch", "--target", target, "--module", module,
             "--ids-file", str(ids_file), "--streams", str(streams),
             "--end-timeout", str(end_timeout)]
        )  # fmt: skip


class Scraper:
    """Scrapes a metrics endpoint every ``interval`` seconds in a thread, as Prometheus would."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.seconds: list[float] = []
        self.failures = 0
        self.body = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self._thread.start()

    def scrape(self) -> str:
        """One scrape now: the exposition text."""
        start = time.perf_counter()
        with urllib.request.urlopen(self.url, timeout=30) as reply:
            body: str = reply.read().decode()
        self.seconds.append(time.perf_counter() - start)
        self.body = body
        return body

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scrape()
            except OSError:
                self.failures += 1

    def stop(self) -> str:
        """Stops scraping; returns one last scrape."""
        self._stop.set()
        self._thread.join(60)
        return self.scrape()


def counter_value(exposition: str, family: str, **labels: str) -> float:
    """The sum of a family's samples with these labels in a Prometheus text exposition."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in exposition.splitlines():
        if line.startswith(family + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
    result = loadgen("unary", "--target", server.target, *server.client_args(), *args)
    result["server_cpu_s"] = server.cpu() - cpu0
    result["server_cpu_us_per_call"] = result["server_cpu_s"] / max(1, result["calls"]) * 1e6
    return result


def rotating(
    loads: Sequence[Callable[[], dict[str, Any]]], rounds: int
) -> list[list[dict[str, Any]]]:
    """Each load's runs, ``rounds`` times, which goes first rotating (with two: alternating).

    So the host's drift within a round favours none of them.
    """
    runs: list[list[dict[str, Any]]] = [[] for _ in loads]
    for i in range(rounds):
        for k in range(len(loads)):
            j = (i + k) % len(loads)
            runs[j].append(loads[j]())
    return runs


def alternating(
    a: Server, b: Server, rounds: int, *args: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same unary load on ``a`` and ``b``, ``rounds`` times, which goes first alternating."""
    ours, theirs = rotating([lambda: unary_on(a, *args), lambda: unary_on(b, *args)], rounds)
    return ours, theirs
