"""The two servers a benchmark compares: tm itself, and a baseline that does no work.

The baseline serves the same services from the same grpcio, protobuf and
server options, but every RPC returns a prebuilt message of the size tm's
would have (copied from a real tm reply), so the difference is tm's own cost.

Run as ``python -m bench.servers {tm,baseline} --port-file FILE``. With
``--tls-cert``/``--tls-key`` the services are served over TLS only (tm with
``--tokens`` also checks every caller's token; the baseline takes no tokens
file and ignores the metadata), and the benchmark's control channel moves to
a plaintext loopback port of its own, outside tm's access checks: the port
file then holds "PORT CONTROL_PORT". tm with ``--metrics-address`` serves its
Prometheus metrics there too (the control method ``metrics_port`` says where),
and with ``--http-address`` its HTTP side (``http_port``; ``page_tokens`` gives
listing tokens from the middle of a module, for the deep-page figures).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import UUID

import grpc

from bench.control import handler
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.config import DEFAULT_GC_FREEZE_INTERVAL, ServerConfig
from tm_server.core import ListFilter
from tm_server.core.module_watch import DEFAULT_WATCH_INTERVAL
from tm_server.core.producers import TaskSpec
from tm_server.heap import HeapManager
from tm_server.security.tls import ServerTls, TlsConfig
from tm_server.server import TmServer, server_options
from tm_server.service.convert import page_to_pb, status_to_pb
from tm_server.service.decoding import register_generic, service_handlers


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def measured_rss() -> int:
    gc.collect()
    return rss_bytes()


class TmBench:
    """Control methods of the tm server under test."""

    def __init__(self, server: TmServer) -> None:
        self.server = server
        self.manager = server.manager
        self.producers = server.producers
        self.created: dict[str, list[UUID]] = {}
        self.grow_done = 0
        self.grow_seconds = 0.0
        self.grow_finished = True
        self._grow_task: asyncio.Task[None] | None = None
        self._made = 0

    def methods(self) -> dict[str, Any]:
        return {
            "populate": self.populate,
            "grow": self.grow,
            "grow_status": self.grow_status,
            "tree": self.tree,
            "finish": self.finish,
            "rss": self.rss,
            "samples": self.samples,
            "journal": self.journal,
            "registered": self.registered,
            "metrics_port": self.metrics_port,
            "http_port": self.http_port,
            "page_tokens": self.page_tokens,
        }

    async def http_port(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"port": self.server.http_port}

    async def page_tokens(self, req: dict[str, Any]) -> dict[str, Any]:
        """Page tokens spread evenly over the middle half of a module's listing.

        The listing is walked in-process, ``step`` tasks a page (a token names
        a position, not a page size: any page size may follow it), so each
        token is where a client walking the module would be that far in.
        """
        module, count = req["module"], int(req.get("count", 100))
        step = int(req.get("step", 1000))
        tokens: list[str] = []
        _, token = await self.manager.list_module_tasks(module, ListFilter(), page_size=step)
        while token:
            tokens.append(token)
            _, token = await self.manager.list_module_tasks(
                module, ListFilter(), page_size=step, page_token=token
            )
        middle = tokens[len(tokens) // 4 : max(len(tokens) // 4 + 1, 3 * len(tokens) // 4)]
        stride = max(1, len(middle) // max(1, count))
        return {"tokens": middle[::stride][:count], "pages": len(tokens) + 1}

    async def metrics_port(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"port": self.server.metrics_port}

    async def registered(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"tasks": sum(c["registered"] for c in self.manager.stats_counts())}

    async def journal(self, req: dict[str, Any]) -> dict[str, Any]:
        journal = self.server.journal
        if journal is None:
            return {}
        await journal.commit()
        return {
            "disk_bytes": journal.disk_bytes(),
            "recovery_seconds": self.server.recovery_seconds,
            **asdict(journal.stats),
        }

    def _spec(self, module: str, **extra: Any) -> TaskSpec:
        return TaskSpec(module=module, type="bench", scope="node", progress_units="units", **extra)

    async def _new(self, spec: TaskSpec, start: bool = True) -> UUID:
        status, _ = await self.producers.create_task(spec, start=start)
        self._made += 1
        if self.server.journal is not None and self._made % 1000 == 0:
            # As calls over the wire would: each waits for its change to be
            # on disk (here a thousand share a wait, as concurrent calls do).
            await self.server.journal.commit()
        return status.id

    async def populate(self, req: dict[str, Any]) -> dict[str, Any]:
        kind, n, module = req["kind"], int(req["n"]), req["module"]
        await self.manager.set_task_ttl(86_400)
        await self.manager.register_module(module)
        ids = self.created.setdefault(module, [])
        before = measured_rss()
        start = time.perf_counter()
        spec = self._spec(module)
        if kind == "running":
            for _ in range(n):
                ids.append(await self._new(spec))
        elif kind == "ttl":
            for _ in range(n):
                task_id = await self._new(spec)
                await self.producers.finish_task(task_id, None)
                ids.append(task_id)
        elif kind == "folded":
            per_parent = 100
            for _ in range(max(1, n // per_parent)):
                parent = await self._new(spec)
                ids.append(parent)
                child_spec = self._spec(module, parent_id=parent)
                for _ in range(per_parent):
                    child = await self._new(child_spec)
                    await self.producers.finish_task(child, None)
        else:
            raise ValueError(kind)
        seconds = time.perf_counter() - start
        after = measured_rss()
        return {"seconds": seconds, "rss_before": before, "rss_after": after, "n": n}

    async def samples(self, req: dict[str, Any]) -> dict[str, Any]:
        module, count = req["module"], int(req.get("count", 10_000))
        ids = self.created.get(module, [])
        picked = random.sample(ids, min(count, len(ids)))
        status = await self.manager.get_status(picked[0])
        entries, _ = await self.manager.list_module_tasks(module, ListFilter(), page_size=100)
        page = page_to_pb(entries, "")
        return {
            "ids": [str(i) for i in picked],
            "status": base64.b64encode(status_to_pb(status).SerializeToString()).decode(),
            "page": base64.b64encode(page.SerializeToString()).decode(),
        }

    async def grow(self, req: dict[str, Any]) -> dict[str, Any]:
        n, chunk, module = int(req["n"]), int(req.get("chunk", 1000)), req["module"]
        await self.manager.register_module(module)
        self.grow_done, self.grow_finished = 0, False

        rate = float(req.get("rate", 0))  # tasks a second; 0: flat out

        async def run() -> None:
            spec = self._spec(module)
            start = time.perf_counter()
            while self.grow_done < n:
                for _ in range(min(chunk, n - self.grow_done)):
                    await self._new(spec)
                    self.grow_done += 1
                # Let calls in between, as a live server would; at a set rate,
                # wait until this chunk is due.
                due = start + self.grow_done / rate if rate > 0 else 0.0
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            self.grow_seconds = time.perf_counter() - start
            self.grow_finished = True

        self._grow_task = asyncio.get_running_loop().create_task(run())
        return {}

    async def grow_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "done": self.grow_done,
            "finished": self.grow_finished,
            "seconds": self.grow_seconds,
        }

    async def tree(self, req: dict[str, Any]) -> dict[str, Any]:
        module, fanouts = req["module"], [int(f) for f in req["fanouts"]]
        await self.manager.register_module(module)
        shards = len(self.manager.shards)
        root = await self._new(self._spec(module))
        level, count = [root], 1
        for fanout in fanouts:
            nxt = []
            for parent in level:
                for i in range(fanout):
                    spec = self._spec(module, parent_id=parent, shard=(count + i) % shards)
                    nxt.append(await self._new(spec))
                count += fanout
            level = nxt
        status = await self.manager.get_status(level[0])
        return {
            "root": str(root),
            "count": count,
            "status": base64.b64encode(status_to_pb(status).SerializeToString()).decode(),
        }

    async def finish(self, req: dict[str, Any]) -> dict[str, Any]:
        ids = [UUID(i) for i in req.get("ids", [])] or self.created.get(req.get("module", ""), [])
        for task_id in ids:
            await self.producers.finish_task(task_id, None)
        return {"finished": len(ids)}

    async def rss(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rss": measured_rss() if req.get("collect") else rss_bytes()}


#: The baseline's first WatchTasks response: only a cursor, of the length of tm's.
_WATCH_CURSOR = "w1." + "A" * 40


class Baseline(pb_grpc.TaskManagerServiceServicer, rpb_grpc.TaskReportingServiceServicer):
    """Every RPC returns a prebuilt message; streams wait for one broadcast."""

    def __init__(self) -> None:
        self.status = pb.GetTaskStatusResponse()
        self.wait_first = pb.WaitTaskResponse()
        self.wait_final = pb.WaitTaskResponse()
        self.page = pb.ListModuleTasksResponse()
        self.recursive = pb.GetTaskStatusRecursiveResponse()
        self.recursive_count = 0
        self.progress = rpb.ReportProgressResponse()
        self.modules = pb.ListModulesResponse(modules=["bench"])
        self.watch_first = pb.WatchTasksResponse(cursor=_WATCH_CURSOR)
        self.broadcast_event = asyncio.Event()

    def methods(self) -> dict[str, Any]:
        return {"prepare": self.prepare, "broadcast": self.broadcast, "rss": self.rss}

    async def prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        if "status" in req:
            status = pb.TaskStatus.FromString(base64.b64decode(req["status"]))
            self.status = pb.GetTaskStatusResponse(status=status)
            self.wait_first = pb.WaitTaskResponse(status=status)
            final = pb.TaskStatus()
            final.CopyFrom(status)
            final.state = pb.TASK_STATE_DONE
            final.end_time.CopyFrom(status.start_time)
            self.wait_final = pb.WaitTaskResponse(status=final)
            self.recursive = pb.GetTaskStatusRecursiveResponse(status=status)
        if "page" in req:
            self.page = pb.ListModuleTasksResponse.FromString(base64.b64decode(req["page"]))
        self.recursive_count = int(req.get("recursive_count", self.recursive_count))
        self.broadcast_event = asyncio.Event()
        return {}

    async def broadcast(self, req: dict[str, Any]) -> dict[str, Any]:
        self.broadcast_event.set()
        return {}

    async def rss(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rss": measured_rss() if req.get("collect") else rss_bytes()}

    async def ListModules(self, request: Any, context: Any) -> pb.ListModulesResponse:
        return self.modules

    async def GetTaskStatus(self, request: Any, context: Any) -> pb.GetTaskStatusResponse:
        return self.status

    async def ListModuleTasks(self, request: Any, context: Any) -> pb.ListModuleTasksResponse:
        return self.page

    async def ReportProgress(self, request: Any, context: Any) -> rpb.ReportProgressResponse:
        return self.progress

    async def WaitTask(self, request: Any, context: Any) -> AsyncIterator[pb.WaitTaskResponse]:
        yield self.wait_first
        await self.broadcast_event.wait()
        yield self.wait_final

    async def WatchTasks(self, request: Any, context: Any) -> AsyncIterator[pb.WatchTasksResponse]:
        # A bare stream: tm's first response (the cursor of now), then nothing
        # until the broadcast, which ends it.
        yield self.watch_first
        await self.broadcast_event.wait()

    async def GetTaskStatusRecursive(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.GetTaskStatusRecursiveResponse]:
        message = self.recursive
        for _ in range(self.recursive_count):
            yield message


async def _control_server(methods: dict[str, Any]) -> tuple[grpc.aio.Server, int]:
    """The control channel on a plaintext loopback port of its own (beside a TLS port)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def serve(
    kind: str,
    port_file: Path,
    shards: int,
    data_dir: Path | None,
    tls: TlsConfig | None = None,
    tokens: Path | None = None,
    metrics_address: str | None = None,
    watch_interval: float | None = None,
    http_address: str | None = None,
) -> None:
    # tm runs as tm-server does by default: a one-node cluster on a SQLite
    # file in its data directory (beside the port file), so the regular-task
    # figures are those of the default configuration.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if kind in ("tm", "tm-no-journal"):
        # As tm-server: a data directory with the journal on (tm-no-journal:
        # --journal off), given or beside the port file.
        data = data_dir or port_file.parent / "data"
        tm = TmServer(
            ServerConfig(
                address="127.0.0.1:0",
                shards=shards,
                node="bench",
                gc_freeze_interval=DEFAULT_GC_FREEZE_INTERVAL,
                store=f"sqlite://{data / 'cluster.db'}",
                data_dir=data,
                journal=kind == "tm",
                tls=tls,
                tokens=tokens,
                metrics_address=metrics_address,
                watch_interval=DEFAULT_WATCH_INTERVAL if watch_interval is None else watch_interval,
                http_address=http_address,
            )
        )
        methods = TmBench(tm).methods()
        if tls is None:
            tm.server.add_generic_rpc_handlers((handler(methods),))
        port = await tm.start()
        control = None if tls is None else await _control_server(methods)
        ports = str(port) if control is None else f"{port} {control[1]}"
        await asyncio.to_thread(port_file.write_text, ports)
        await stop.wait()
        await tm.stop()
        if control is not None:
            await control[0].stop(None)
        return
    # The baseline serves only the RPCs the benchmarks call; the others stay
    # abstract (UNIMPLEMENTED), which mypy flags.
    baseline = Baseline()  # type: ignore[abstract]
    server = grpc.aio.server(options=server_options())
    # Registered as tm registers its services (generic handlers only, see
    # register_generic): grpcio's per-call cost of registered methods grows
    # with their number, which is the stack's, not work tm does per call.
    for add_to_server in (
        pb_grpc.add_TaskManagerServiceServicer_to_server,
        rpb_grpc.add_TaskReportingServiceServicer_to_server,
    ):
        for name, handlers in service_handlers(add_to_server, baseline):
            register_generic(server, name, handlers)
    if tls is None:
        server.add_generic_rpc_handlers((handler(baseline.methods()),))
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        # The same credentials as tm's (grpcio's dynamic ones, asked before
        # each handshake), so both sides pay the same TLS.
        port = server.add_secure_port("127.0.0.1:0", ServerTls(tls).credentials())
    await server.start()
    control = None if tls is None else await _control_server(baseline.methods())
    # The same garbage-collection management as tm's server: it is a setting
    # of the process, not work per call, and without it the baseline's full
    # collections would land in its timings and flatter tm.
    heap = HeapManager(DEFAULT_GC_FREEZE_INTERVAL)
    heap.start()
    ports = str(port) if control is None else f"{port} {control[1]}"
    await asyncio.to_thread(port_file.write_text, ports)
    await stop.wait()
    baseline.broadcast_event.set()
    await server.stop(5)
    if control is not None:
        await control[0].stop(None)
    await heap.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("tm", "tm-no-journal", "baseline"))
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    parser.add_argument("--tls-peer-ca", type=Path, help="tm: the CA its cluster peers have")
    parser.add_argument("--tokens", type=Path, help="tm: the tokens file callers are checked by")
    parser.add_argument("--metrics-address", help="tm: serve Prometheus metrics at HOST:PORT")
    parser.add_argument(
        "--watch-interval", type=float, help="tm: seconds between a module watch's batches"
    )
    parser.add_argument("--http-address", help="tm: serve the HTTP side at HOST:PORT")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tokens is not None and (args.kind == "baseline" or args.tls_cert is None):
        parser.error("--tokens is for tm, with --tls-cert/--tls-key")
    if args.metrics_address is not None and args.kind == "baseline":
        parser.error("--metrics-address is for tm")
    if args.watch_interval is not None and args.kind == "baseline":
        parser.error("--watch-interval is for tm")
    if args.http_address is not None and args.kind == "baseline":
        parser.error("--http-address is for tm")
    tls = None
    if args.tls_cert is not None:
        tls = TlsConfig(args.tls_cert, args.tls_key, peer_ca=args.tls_peer_ca)
    served = serve(
        args.kind, args.port_file, args.shards, args.data_dir, tls, args.tokens,
        args.metrics_address, args.watch_interval, args.http_address,
    )  # fmt: skip
    asyncio.run(served)


if __name__ == "__main__":
    main()
