"""The HTTP load generator: aiohttp clients in a process of their own, one JSON result line.

The HTTP side's counterpart of ``bench.loadgen unary``: ``--concurrency``
requests in flight over ``--pools`` client sessions (each a connection pool
of keep-alive HTTP/1.1 connections, as many as its share of the requests in
flight, so no request waits for a connection), flat out for ``--duration``
seconds. Bodies are read but not decoded (the gRPC load generator's stubs
decode theirs; here the server's side is what is measured, and decoding
JSON would only make the client the limit sooner).

Modes: ``status`` (``GET /task_manager/task_status/{id}`` of random ids of
``--ids-file``: one window, one result) and ``pages`` (``GET
/task_manager/list_module_tasks/{module}?page_size=N``: each worker starts at
the first page, or at a random token of a phase's tokens file, then follows
``X-TM-Next-Page-Token`` for ``--follow`` pages, or to the module's end, and
starts again). ``pages`` runs every ``--phase`` once a round for ``--rounds``
rounds, which goes first rotating, in one process (a process start costs
~0.5 s, which the tiny configuration cannot spare), and prints one line of
every phase's results; with ``--server-pid`` each result has the server's
CPU over its window, read from /proc as ``bench.harness`` does. ``sse`` holds
``--streams`` Server-Sent Events watches of a module open (``GET
/tm/v1/watch``), as ``bench.loadgen modwatch`` does WatchTasks streams: a
ready line once each is open, a result line once each has every awaited
task's final state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

NEXT_PAGE_HEADER = "X-TM-Next-Page-Token"
STATUS_PATH = "/task_manager/task_status/"
TICKS = os.sysconf("SC_CLK_TCK")


def emit(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """Another process's CPU seconds so far (user + system): the server's, read per phase."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load_list(path: str | None) -> list[str]:
    values: list[str] = json.loads(Path(path).read_text()) if path else []
    return values


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """The median, p99 and worst, in milliseconds (as ``bench.loadgen``'s)."""
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else 0.0

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


class Load:
    """The client sessions, and one phase of requests at a time over them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        per_pool = max(1, -(-args.concurrency // args.pools))
        self.sessions = [
            aiohttp.ClientSession(
                base_url=args.url,
                connector=aiohttp.TCPConnector(limit=per_pool, limit_per_host=per_pool),
                timeout=aiohttp.ClientTimeout(total=60),
                auto_decompress=False,
            )
            for _ in range(args.pools)
        ]

    async def connect(self) -> None:
        """One request a pool, so that a window times requests, not handshakes."""
        for session in self.sessions:
            async with session.get("/task_manager/list_modules") as reply:
                await reply.read()

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()

    async def phase(self, module: str, ids: list[str], tokens: list[str]) -> dict[str, Any]:
        """One window: status reads of ``ids`` (when given), else pages of ``module``."""
        args = self.args
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        pages = {"with_next": 0, "restarts": 0}
        size = 0
        list_path = f"/task_manager/list_module_tasks/{module}"
        deadline = time.monotonic() + args.duration

        async def status_worker(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    async with session.get(STATUS_PATH + random.choice(ids)) as reply:
                        body = await reply.read()
                        if reply.status != 200 or not body:
                            errors[str(reply.status)] += 1
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - start)

        async def pages_worker(session: aiohttp.ClientSession) -> None:
            nonlocal size
            token, walked = "", 0
            while time.monotonic() < deadline:
                if walked == 0:
                    token = random.choice(tokens) if tokens else ""
                    pages["restarts"] += 1
                query = {"page_size": str(args.page_size)}
                if token:
                    query["page_token"] = token
                start = time.perf_counter()
                try:
                    async with session.get(list_path, params=query) as reply:
                        body = await reply.read()
                        following = reply.headers.get(NEXT_PAGE_HEADER, "")
                        if reply.status != 200:
                            errors[str(reply.status)] += 1
                            walked = 0
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    walked = 0
                    continue
                latencies.append(time.perf_counter() - start)
                size += len(body)
                walked += 1
                if following:
                    pages["with_next"] += 1
                token = following
                if not following or walked >= args.follow:
                    walked = 0

        worker = status_worker if ids else pages_worker
        sessions = self.sessions
        cpu0, server0, t0 = cpu_seconds(), process_cpu(args.server_pid), time.monotonic()
        workers = (worker(sessions[i % len(sessions)]) for i in range(args.concurrency))
        await asyncio.gather(*workers)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
        server_cpu = process_cpu(args.server_pid) - server0
        result: dict[str, Any] = {
            "calls": len(latencies),
            "seconds": elapsed,
            "rate": len(latencies) / elapsed,
            **latency_summary(latencies),
            "client_cpu_s": cpu,
            "errors": dict(errors),
        }
        if args.server_pid:
            result["server_cpu_s"] = server_cpu
            result["server_cpu_us_per_call"] = server_cpu / max(1, len(latencies)) * 1e6
        if not ids:
            result.update(pages, bytes_per_page=size / max(1, len(latencies)))
        return result


#: The states a task ends in, as the HTTP side writes them.
FINAL_STATES = frozenset((b"done", b"failed"))
#: A task's id and state in an event's ``task_stats``, whose first two fields they are
#: (docs/http.md); a change of that order shows as streams that miss final states.
TASK_STATE = re.compile(rb'"task_id": "([0-9a-f-]{36})", "state": "([a-z]+)"')


async def sse(args: argparse.Namespace) -> None:
    """``--streams`` SSE watches of ``--module``, each until every id of ``--ids-file`` is final.

    As ``bench.loadgen modwatch`` over gRPC: each stream keeps the latest
    state of every task its batches name, as cheaply as Python allows (a
    compiled pattern finds each event's task id and state in the batch's
    bytes: ``json.loads`` of every batch took more than a core for 100
    streams, where gRPC's C decoder takes ~0.2), and ends once every awaited
    task was seen done or failed; one that ends otherwise counts as ``ended_early``, an ``error``
    event by its reason, a timeout as ``timeout``.
    """
    awaited = load_list(args.ids_file)
    session = aiohttp.ClientSession(
        base_url=args.url,
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        auto_decompress=False,
    )
    ready = asyncio.Event()
    counts = {"opened": 0, "failed_to_open": 0}
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    totals = {"responses": 0, "events": 0, "missing": 0, "max_events": 0}
    last_end = 0.0

    def opened(ok: bool) -> None:
        counts["opened" if ok else "failed_to_open"] += 1
        if counts["opened"] + counts["failed_to_open"] == args.streams:
            ready.set()

    async def one() -> None:
        nonlocal last_end
        latest: dict[bytes, bytes] = {}
        remaining = {task.encode() for task in awaited}
        responses = events = max_events = 0
        outcome, started = "ended_early", False
        try:
            async with session.get("/tm/v1/watch", params={"module": args.module}) as reply:
                if reply.status != 200:
                    outcome = str(reply.status)
                    reasons[json.loads(await reply.read()).get("reason", "")] += 1
                    return
                opened(True)
                started = True
                buffer = b""
                async for chunk in reply.content.iter_any():
                    buffer += chunk
                    *blocks, buffer = buffer.split(b"\n\n")
                    for block in blocks:
                        kind, data = "", b""
                        for line in block.split(b"\n"):
                            if line.startswith(b"event: "):
                                kind = line[7:].decode()
                            elif line.startswith(b"data: "):
                                data = line[6:]
                        if kind == "error":
                            outcome = "error"
                            reasons[json.loads(data).get("reason", "")] += 1
                            return
                        if kind != "batch":
                            continue
                        responses += 1
                        found = TASK_STATE.findall(data)
                        events += len(found)
                        max_events = max(max_events, len(found))
                        latest.update(found)
                        remaining.difference_update(
                            task for task, state in found if state in FINAL_STATES
                        )
                    if not remaining:
                        outcome = "final_all"
                        last_end = max(last_end, time.monotonic())
                        return
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        except asyncio.CancelledError:
            outcome = "timeout"
        finally:
            if not started:
                opened(False)
            outcomes[outcome] += 1
            totals["responses"] += responses
            totals["events"] += events
            totals["missing"] += len(remaining)
            totals["max_events"] = max(totals["max_events"], max_events)

    cpu0, t0 = cpu_seconds(), time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(args.streams)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.wait(), args.ready_timeout)
    emit({"ready": True, "opened": counts["opened"], "open_seconds": time.monotonic() - t0,
          "errors": dict(outcomes), "client_cpu_s": cpu_seconds() - cpu0})  # fmt: skip
    _, pending = await asyncio.wait(tasks, timeout=args.end_timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    emit({"opened": counts["opened"], "outcomes": dict(outcomes), "reasons": dict(reasons),
          "last_end": last_end, "client_cpu_s": cpu_seconds() - cpu0, **totals})  # fmt: skip
    await session.close()


async def run(args: argparse.Namespace) -> None:
    if args.mode == "sse":
        await sse(args)
        return
    load = Load(args)
    try:
        await load.connect()
        if args.mode == "status":
            emit(await load.phase("", load_list(args.ids_file), []))
            return
        # Pages: each phase (NAME=MODULE or NAME=MODULE:TOKENS_FILE) once a round,
        # which goes first rotating, as bench.run's alternating rounds.
        phases = []
        for spec in args.phase:
            name, _, rest = spec.partition("=")
            module, _, tokens_file = rest.partition(":")
            phases.append((name, module, load_list(tokens_file or None)))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in phases}
        for i in range(args.rounds):
            for k in range(len(phases)):
                name, module, tokens = phases[(i + k) % len(phases)]
                runs[name].append(await load.phase(module, [], tokens))
        emit({"phases": runs})
    finally:
        await load.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("status", "pages", "sse"))
    parser.add_argument("--url", required=True, help="the HTTP side, http://HOST:PORT")
    parser.add_argument("--ids-file", help="status: a JSON list of task ids")
    parser.add_argument(
        "--phase", action="append", default=[],
        help="pages: NAME=MODULE (from the first page) or NAME=MODULE:TOKENS_FILE (from "
        "random tokens of a JSON list); repeatable",
    )  # fmt: skip
    parser.add_argument("--module", default="bench", help="sse: the module watched")
    parser.add_argument("--rounds", type=int, default=1, help="pages: rounds of every phase")
    parser.add_argument("--streams", type=int, default=100, help="sse: watch streams")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--end-timeout", type=float, default=300.0)
    parser.add_argument("--server-pid", type=int, default=0, help="read its CPU per phase")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--follow", type=int, default=10, help="pages: pages walked a start")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pools", type=int, default=4, help="client sessions (pools)")
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
