"""The load generator: runs in its own process and prints one JSON result per phase.

Modes: ``unary`` (calls/s and latency at a fixed number of calls in flight),
``watch`` (many WaitTask streams; prints a ready line, then the result once
they all ended), ``modwatch`` (many WatchTasks streams on a module, each
keeping the latest state of every task it hears of; prints a ready line,
then the result once each has every awaited task in a final state) and
``recursive`` (messages/s on one GetTaskStatusRecursive).
With ``--tls-ca`` every channel is TLS (trusting that CA); with ``--token-file``
every call carries ``authorization: Bearer TOKEN`` metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc

STREAMS_PER_CHANNEL = 1000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def load_ids(path: str | None) -> list[str]:
    ids: list[str] = json.loads(Path(path).read_text()) if path else []
    return ids


def open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to ``--target``: TLS trusting ``--tls-ca`` when given, else plaintext."""
    if args.tls_ca is None:
        return grpc.aio.insecure_channel(args.target)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes())
    return grpc.aio.secure_channel(args.target, credentials)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call sends: the bearer token of ``--token-file``, if one is given."""
    if args.token_file is None:
        return None
    return (("authorization", f"Bearer {Path(args.token_file).read_text().strip()}"),)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """The median, p99 and worst of latencies in seconds, in milliseconds."""
    return {
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies, default=0.0) * 1e3,
    }


async def unary(args: argparse.Namespace) -> None:
    ids = load_ids(args.ids_file)
    channels = [open_channel(args) for _ in range(args.channels)]
    metadata = call_metadata(args)
    stubs = [pb_grpc.TaskManagerServiceStub(c) for c in channels]
    reporters = [rpb_grpc.TaskReportingServiceStub(c) for c in channels]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = 0
    deadline = time.monotonic() + args.duration
    stop_file = Path(args.stop_file) if args.stop_file else None

    async def worker(n: int) -> None:
        nonlocal counter
        stub, reporter = stubs[n % len(stubs)], reporters[n % len(stubs)]
        token = ""
        # Paced (--rate): each worker sends on its own schedule, and a call's
        # latency counts from when it was due, so a stalled server is charged
        # for the calls it held back (no coordinated omission).
        interval = args.concurrency / args.rate if args.rate > 0 else 0.0
        due = time.perf_counter() + n * interval / args.concurrency
        while time.monotonic() < deadline:
            if stop_file is not None and stop_file.exists():
                break
            if interval:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                start, due = due, due + interval
            else:
                start = time.perf_counter()
            try:
                if args.method == "GetTaskStatus":
                    await stub.GetTaskStatus(
                        pb.GetTaskStatusRequest(task_id=random.choice(ids)), metadata=metadata
                    )
                elif args.method == "ListModuleTasks":
                    reply = await stub.ListModuleTasks(
                        pb.ListModuleTasksRequest(
                            module=args.module, page_size=args.page_size, page_token=token
                        ),
                        metadata=metadata,
                    )
                    token = reply.next_page_token
                elif args.method == "ReportProgress":
                    counter += 1
                    await reporter.ReportProgress(
                        rpb.ReportProgressRequest(task_id=random.choice(ids), completed=counter),
                        metadata=metadata,
                    )
                elif args.method == "CreateTask":
                    # A started task with an id of its own, as a producer makes one.
                    await reporter.CreateTask(
                        rpb.CreateTaskRequest(
                            module=args.module, type="bench", task_id=str(uuid.uuid4()),
                            start=True,
                        ),
                        metadata=metadata,
                    )  # fmt: skip
                else:
                    raise ValueError(args.method)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - start)

    if stop_file is not None:
        # Running until told to stop: connect first, then say so, so the caller
        # starts the workload only once reads are flowing.
        for stub in stubs:
            await stub.ListModules(pb.ListModulesRequest(), metadata=metadata)
        emit({"started": True})
        deadline = time.monotonic() + args.duration
    cpu0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    for channel in channels:
        await channel.close(None)
    if args.latencies_file:
        # For a caller that pools several windows into one percentile.
        await asyncio.to_thread(Path(args.latencies_file).write_text, json.dumps(latencies))
    emit(
        {
            "calls": len(latencies),
            "seconds": elapsed,
            "rate": len(latencies) / elapsed,
            **latency_summary(latencies),
            "client_cpu_s": cpu,
            "errors": dict(errors),
        }
    )


async def watch(args: argparse.Namespace) -> None:
    ids = load_ids(args.ids_file)
    n_channels = max(1, -(-args.streams // STREAMS_PER_CHANNEL))
    channels = [open_channel(args) for _ in range(n_channels)]
    metadata = call_metadata(args)
    stubs = [pb_grpc.TaskManagerServiceStub(c) for c in channels]
    ready = asyncio.Event()
    opened = 0
    outcomes: Counter[str] = Counter()
    last_end = 0.0

    async def one(i: int) -> None:
        nonlocal opened, last_end
        call = stubs[i % len(stubs)].WaitTask(
            pb.WaitTaskRequest(task_id=ids[i % len(ids)]), metadata=metadata
        )
        state = None
        try:
            async for message in call:
                if state is None:
                    opened += 1
                    if opened == args.streams:
                        ready.set()
                state = message.status.state
            outcomes["final_done" if state == pb.TASK_STATE_DONE else "final_other"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[exc.code().name] += 1
            if (
                state is None
                and opened + sum(v for k, v in outcomes.items() if not k.startswith("final"))
                >= args.streams
            ):
                ready.set()
        last_end = max(last_end, time.monotonic())

    cpu0, t0 = cpu_seconds(), time.monotonic()
    tasks = [asyncio.ensure_future(one(i)) for i in range(args.streams)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.wait(), args.ready_timeout)
    emit({"ready": True, "opened": opened, "open_seconds": time.monotonic() - t0,
          "errors": dict(outcomes)})  # fmt: skip
    await asyncio.wait(tasks, timeout=args.end_timeout)
    emit(
        {
            "opened": opened,
            "outcomes": dict(outcomes),
            "last_end": last_end,
            "client_cpu_s": cpu_seconds() - cpu0,
        }
    )
    for channel in channels:
        await channel.close(None)


#: The states a task ends in: an event with one of them is the task's final state.
FINAL_STATES = frozenset((pb.TASK_STATE_DONE, pb.TASK_STATE_FAILED))


async def modwatch(args: argparse.Namespace) -> None:
    """WatchTasks streams on ``--module``, each until it has every id of ``--ids-file`` final.

    A stream reads as a dashboard would, as cheaply as Python allows (the
    watchers share 2 cores with the server and the producers): each response
    is decoded by the generated ``WatchTasksResponse.FromString`` (the stub's
    deserializer) and only the latest state of each task id is kept. A task
    is final once an event (FINISHED, or REMOVED with its last state) carries
    DONE or FAILED. A stream that ends otherwise counts by its status code
    (RESOURCE_EXHAUSTED for a watcher that fell behind) or as ``ended_early``.
    """
    awaited = load_ids(args.ids_file)
    n_channels = max(1, -(-args.streams // STREAMS_PER_CHANNEL))
    channels = [open_channel(args) for _ in range(n_channels)]
    metadata = call_metadata(args)
    stubs = [pb_grpc.TaskManagerServiceStub(c) for c in channels]
    request = pb.WatchTasksRequest(module=args.module)
    ready = asyncio.Event()
    opened = failed_to_open = 0
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    totals = {"responses": 0, "events": 0, "missing": 0, "max_events": 0}
    last_end = 0.0
    final = FINAL_STATES

    async def one(i: int) -> None:
        nonlocal opened, failed_to_open, last_end
        latest: dict[str, int] = {}
        remaining = set(awaited)
        responses = events = max_events = 0
        call = stubs[i % len(stubs)].WatchTasks(request, metadata=metadata)
        outcome = "ended_early"
        try:
            async for response in call:
                if not responses:
                    opened += 1
                    if opened + failed_to_open == args.streams:
                        ready.set()
                responses += 1
                batch = response.events
                n = len(batch)
                if not n:
                    continue
                events += n
                max_events = max(max_events, n)
                for event in batch:
                    task = event.task
                    state = latest[task.task_id] = task.state
                    if state in final:
                        remaining.discard(task.task_id)
                if not remaining:
                    outcome = "final_all"
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
            reasons[_reason(exc)] += 1
            if not responses:
                failed_to_open += 1
                if opened + failed_to_open == args.streams:
                    ready.set()
        except asyncio.CancelledError:
            outcome = "timeout"
        outcomes[outcome] += 1
        totals["responses"] += responses
        totals["events"] += events
        totals["missing"] += len(remaining)
        totals["max_events"] = max(totals["max_events"], max_events)
        if outcome == "final_all":
            last_end = max(last_end, time.monotonic())

    cpu0, t0 = cpu_seconds(), time.monotonic()
    tasks = [asyncio.ensure_future(one(i)) for i in range(args.streams)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.wait(), args.ready_timeout)
    emit({"ready": True, "opened": opened, "open_seconds": time.monotonic() - t0,
          "errors": dict(outcomes), "client_cpu_s": cpu_seconds() - cpu0})  # fmt: skip
    _, pending = await asyncio.wait(tasks, timeout=args.end_timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    emit(
        {
            "opened": opened,
            "outcomes": dict(outcomes),
            "reasons": dict(reasons),
            "last_end": last_end,
            "client_cpu_s": cpu_seconds() - cpu0,
            **totals,
        }
    )
    for channel in channels:
        await channel.close(None)


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call (its code's name without one)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in () if status is None else status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return error.code().name


async def recursive(args: argparse.Namespace) -> None:
    async with open_channel(args) as channel:
        stub = pb_grpc.TaskManagerServiceStub(channel)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        count = 0
        async for _ in stub.GetTaskStatusRecursive(
            pb.GetTaskStatusRecursiveRequest(task_id=args.id), metadata=call_metadata(args)
        ):
            count += 1
        elapsed = time.monotonic() - t0
        emit({"messages": count, "seconds": elapsed, "rate": count / elapsed,
              "client_cpu_s": cpu_seconds() - cpu0})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("unary", "watch", "modwatch", "recursive"))
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="GetTaskStatus")
    parser.add_argument("--ids-file")
    parser.add_argument("--id")
    parser.add_argument("--module", default="bench")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="unary: calls/s in all, 0: flat out"
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stop-file", help="unary: stop early once this file exists")
    parser.add_argument("--latencies-file", help="unary: also write every latency (s) here")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--end-timeout", type=float, default=120.0)
    parser.add_argument("--tls-ca", help="connect with TLS, trusting this CA (PEM)")
    parser.add_argument("--token-file", help="send the bearer token in this file on every call")
    args = parser.parse_args()
    runners = {"unary": unary, "watch": watch, "modwatch": modwatch, "recursive": recursive}
    runner = runners[args.mode]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
