"""The HTTP side's figures: listing pages and status reads (``--only http``), SSE (``sse``).

The first are taken on one tm server serving its HTTP side (``--http-address``)
beside gRPC, so the ratios compare within one process: pages of a module of
``scale`` tasks against pages of one of ``small_module`` (first pages, and
deep ones from tokens in the middle of each module), and status reads over
HTTP against ``GetTaskStatus`` over gRPC of the same ids at the same
concurrency, each from one load-generator process (``bench.httpload``, an
aiohttp client; ``bench.loadgen`` for gRPC), rounds interleaved. The SSE
figures (``http_watch_figures``) put Server-Sent Events watches of a module
beside the module-watch figure's progress load, against WatchTasks streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Config,
    ModuleWatchers,
    Server,
    WatcherProcess,
    median,
    rotating,
    round_ratios,
    run_tool,
    total_errors,
    unary_on,
    write_ids,
)
from bench.report import Figure

#: Requests in flight on the listing figures (as the gRPC listing figure's 4).
PAGE_CONCURRENCY = 4
#: Pages a walk follows from where it starts before starting again.
PAGES_FOLLOWED = 10
#: Requests in flight on the status figure, and the client pools they share.
STATUS_CONCURRENCY = 64
STATUS_POOLS = 4


def httpload(*args: str) -> dict[str, Any]:
    return run_tool("bench.httpload", *args)


def http_on(server: Server, *args: str) -> dict[str, Any]:
    """One ``bench.httpload`` run on the server's HTTP side, with the server's CPU in it."""
    cpu0 = server.cpu()
    result = httpload(args[0], "--url", server.http_url, *args[1:])
    result["server_cpu_s"] = server.cpu() - cpu0
    result["server_cpu_us_per_call"] = result["server_cpu_s"] / max(1, result["calls"]) * 1e6
    return result


class SseWatchers(WatcherProcess):
    """``bench.httpload sse``: Server-Sent Events watches of a module (as ``ModuleWatchers``)."""

    def __init__(
        self, url: str, module: str, ids_file: Path, streams: int, end_timeout: float = 300
    ) -> None:
        super().__init__(
            ["bench.httpload", "sse", "--url", url, "--module", module,
             "--ids-file", str(ids_file), "--streams", str(streams),
             "--end-timeout", str(end_timeout)]
        )  # fmt: skip


def _token_step(tasks: int) -> int:
    """The in-process page size the tokens are gathered at: ~200 positions a module."""
    return max(1, min(1000, tasks // 200))


def _pages_figure(
    label: str, workload: str, cfg: Config, big: list[dict[str, Any]], small: list[dict[str, Any]]
) -> Figure:
    rate, small_rate = median(big, "rate"), median(small, "rate")
    ratio = rate / small_rate
    errors, small_errors = total_errors(big), total_errors(small)
    return Figure(
        f"HTTP listing: {label}", workload, "pages/s", rate, small_rate, ratio,
        ">= 0.9x the small module's pages/s (a page of the big module costs no more)",
        ratio >= 0.9 and not errors and not small_errors,
        {"note": "baseline column: the small module, same server",
         "server_cpu_us_per_page": median(big, "server_cpu_us_per_call"),
         "small_server_cpu_us_per_page": median(small, "server_cpu_us_per_call"),
         "p99_ms": median(big, "p99_ms"), "small_p99_ms": median(small, "p99_ms"),
         "client_cpu_s": median(big, "client_cpu_s"),
         "small_client_cpu_s": median(small, "client_cpu_s"),
         "bytes_per_page": round(median(big, "bytes_per_page")),
         "round_ratios": round_ratios(big, small),
         "errors": errors, "small_errors": small_errors},
    )  # fmt: skip


def _rotate(loads: list[tuple[str, Any]], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Each named load ``rounds`` times, which goes first rotating, by name."""
    runs = rotating([load for _, load in loads], rounds)
    return {name: got for (name, _), got in zip(loads, runs, strict=True)}


def http_figures(cfg: Config, tmp: Path) -> list[Figure]:
    tm = Server("tm", cfg.shards, http_address="127.0.0.1:0")
    try:
        tm.control("populate", kind="running", n=cfg.scale, module="bench")
        tm.control("populate", kind="running", n=cfg.small_module, module="small")
        samples = tm.control("samples", module="bench")
        ids = write_ids(tmp, "http-ids", samples["ids"])
        tokens, counts = {}, {}
        for module, tasks in (("bench", cfg.scale), ("small", cfg.small_module)):
            got = tm.control("page_tokens", module=module, count=100, step=_token_step(tasks))
            tokens[module] = write_ids(tmp, f"http-tokens-{module}", got["tokens"])
            counts[module] = len(got["tokens"])
        window = str(max(0.3, cfg.duration * 0.6))

        # Status reads: HTTP and gRPC in turns, the same ids, in flight and processes.
        status = _rotate(
            [("http", lambda: http_on(
                tm, "status", "--ids-file", str(ids), "--concurrency", str(STATUS_CONCURRENCY),
                "--pools", str(STATUS_POOLS), "--duration", window)),
             ("grpc", lambda: unary_on(
                tm, "--method", "GetTaskStatus", "--ids-file", str(ids), "--concurrency",
                str(STATUS_CONCURRENCY), "--channels", str(STATUS_POOLS), "--duration",
                window))],
            cfg.close_rounds,
        )  # fmt: skip

        # Pages: first and deep, big and small, rotating, in one client process.
        phases = [
            f"{module}-{kind}={module}" + (f":{tokens[module]}" if kind == "deep" else "")
            for kind in ("first", "deep")
            for module in ("bench", "small")
        ]
        listing: dict[str, list[dict[str, Any]]] = httpload(
            "pages", "--url", tm.http_url, "--server-pid", str(tm.proc.pid),
            *(arg for phase in phases for arg in ("--phase", phase)),
            "--rounds", str(cfg.close_rounds), "--page-size", "100",
            "--follow", str(PAGES_FOLLOWED), "--concurrency", str(PAGE_CONCURRENCY),
            "--pools", str(PAGE_CONCURRENCY), "--duration", window,
        )["phases"]  # fmt: skip
        grpc_walk = unary_on(
            tm, "--method", "ListModuleTasks", "--module", "bench", "--concurrency",
            str(PAGE_CONCURRENCY), "--page-size", "100", "--duration", window,
        )  # fmt: skip
    finally:
        tm.stop()

    http, grpc_ = status["http"], status["grpc"]
    rate, grpc_rate = median(http, "rate"), median(grpc_, "rate")
    ratio = rate / grpc_rate
    errors, grpc_errors = total_errors(http), total_errors(grpc_)
    walk = (
        f"{PAGE_CONCURRENCY} in flight, each walking {PAGES_FOLLOWED} pages by "
        "X-TM-Next-Page-Token then starting again"
    )
    rounds = f"median of {cfg.close_rounds} rotating rounds"
    first = _pages_figure(
        "first pages",
        f"GET list_module_tasks?page_size=100 from the first page, a module of {cfg.scale:,} "
        f"tasks vs one of {cfg.small_module:,} on the same server ({walk}; {rounds})",
        cfg, listing["bench-first"], listing["small-first"],
    )  # fmt: skip
    first.extra["grpc_pages_per_s"] = round(grpc_walk["rate"], 1)
    first.extra["grpc_server_cpu_us_per_page"] = round(grpc_walk["server_cpu_us_per_call"], 1)
    deep = _pages_figure(
        "deep pages",
        f"the same from page tokens spread over the middle half of each module ({counts['bench']}"
        f" starts in the big one, {counts['small']} in the small one; {walk}; {rounds})",
        cfg, listing["bench-deep"], listing["small-deep"],
    )  # fmt: skip
    return [
        first,
        deep,
        Figure(
            f"HTTP status reads, {STATUS_CONCURRENCY} in flight",
            f"GET task_status/{{id}} of random ids ({cfg.scale:,} tasks on {cfg.shards} shards) "
            f"over {STATUS_POOLS} aiohttp keep-alive pools vs GetTaskStatus over "
            f"{STATUS_POOLS} gRPC channels, the same server, ids and in flight, one "
            f"client process each ({rounds})",
            "calls/s", rate, grpc_rate, ratio, ">= 0.7x gRPC's calls/s",
            ratio >= 0.7 and not errors and not grpc_errors,
            {"note": "baseline column: gRPC on the same server",
             "server_cpu_us_per_call": median(http, "server_cpu_us_per_call"),
             "grpc_server_cpu_us_per_call": median(grpc_, "server_cpu_us_per_call"),
             "p99_ms": median(http, "p99_ms"), "grpc_p99_ms": median(grpc_, "p99_ms"),
             "client_cpu_s": median(http, "client_cpu_s"),
             "grpc_client_cpu_s": median(grpc_, "client_cpu_s"),
             "window_s": float(window), "round_ratios": round_ratios(http, grpc_),
             "errors": errors, "grpc_errors": grpc_errors},
        ),
    ]  # fmt: skip


def http_watch_figures(cfg: Config, tmp: Path) -> list[Figure]:
    """SSE watches of a module under progress reports, against as many WatchTasks streams.

    Two tm servers serving HTTP, each with ``progress_tasks`` running tasks:
    one watched by ``module_watchers`` SSE streams, the other by as many gRPC
    WatchTasks streams (``bench.loadgen modwatch``); the progress-report load
    alternates between them (the idle one's watchers have nothing to read),
    then every task finishes and every stream must end on every final state.
    """
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(Server("tm", cfg.shards, http_address="127.0.0.1:0"))
        sse_tm, grpc_tm = servers
        ids = {}
        for name, server in (("sse", sse_tm), ("grpc", grpc_tm)):
            server.control("populate", kind="running", n=cfg.progress_tasks, module="bench")
            got = server.control("samples", module="bench", count=cfg.progress_tasks)
            ids[name] = write_ids(tmp, f"http-watched-{name}", got["ids"])
        sse = SseWatchers(sse_tm.http_url, "bench", ids["sse"], cfg.module_watchers)
        grpc_ = ModuleWatchers(grpc_tm.target, "bench", ids["grpc"], cfg.module_watchers)
        cpu0 = {"sse": sse.cpu(), "grpc": grpc_.cpu()}
        load = ("--method", "ReportProgress", "--concurrency", "64", "--duration",
                str(cfg.duration))  # fmt: skip
        runs = _rotate_servers(
            [("sse", sse_tm, ("--ids-file", str(ids["sse"]), *load)),
             ("grpc", grpc_tm, ("--ids-file", str(ids["grpc"]), *load))],
            cfg.rounds,
        )  # fmt: skip
        watch_cpu = {"sse": sse.cpu() - cpu0["sse"], "grpc": grpc_.cpu() - cpu0["grpc"]}
        finished, finish_cpu = {}, {}
        for name, server, watchers in (("sse", sse_tm, sse), ("grpc", grpc_tm, grpc_)):
            server_cpu0, watchers_cpu0 = server.cpu(), watchers.cpu()
            start = time.monotonic()
            server.control("finish", module="bench")
            result = watchers.result()
            finished[name] = (result, max(0.0, result["last_end"] - start))
            # Which side the finish waited on: the server's CPU and the watchers'.
            finish_cpu[name] = (round(server.cpu() - server_cpu0, 2),
                                round(watchers.final_cpu - watchers_cpu0, 2))  # fmt: skip
    finally:
        for server in servers:
            server.stop()

    ours, theirs = runs["sse"], runs["grpc"]
    rate, grpc_rate = median(ours, "rate"), median(theirs, "rate")
    ratio = rate / grpc_rate
    errors = total_errors(ours)
    load_seconds = cfg.rounds * cfg.duration
    (watched, last), (grpc_watched, grpc_last) = finished["sse"], finished["grpc"]
    done = watched["outcomes"].get("final_all", 0)
    n, streams = cfg.progress_tasks, cfg.module_watchers
    return [
        Figure(
            "HTTP watch streams: progress reports",
            f"ReportProgress on {n:,} running tasks at 64 in flight, {streams:,} SSE watches "
            "(GET /tm/v1/watch) open on their module vs another tm with as many gRPC "
            f"WatchTasks streams (median of {cfg.rounds} alternating rounds)",
            "calls/s", rate, grpc_rate, ratio, ">= 0.9x the rate with gRPC streams",
            ratio >= 0.9 and not errors,
            {"note": "baseline column: tm with as many WatchTasks streams",
             "server_cpu_us_per_call": median(ours, "server_cpu_us_per_call"),
             "grpc_server_cpu_us_per_call": median(theirs, "server_cpu_us_per_call"),
             "client_cpu_s": median(ours, "client_cpu_s"),
             "watchers_cpu_share": round(watch_cpu["sse"] / load_seconds, 3),
             "grpc_watchers_cpu_share": round(watch_cpu["grpc"] / load_seconds, 3),
             "watch_batches": watched["responses"], "watch_events": watched["events"],
             "grpc_watch_batches": grpc_watched["responses"],
             "round_ratios": round_ratios(ours, theirs), "errors": errors},
        ),
        Figure(
            "HTTP watch streams: final states",
            f"then all {n:,} tasks finish: of the {streams:,} SSE watches, those whose events "
            "gave every task's final state", "watchers", done, None, None, f"all {streams:,}",
            done == streams,
            {"outcomes": watched["outcomes"], "reasons": watched["reasons"],
             "tasks_missing": watched["missing"], "opened": sse.ready["opened"],
             "last_final_seconds": round(last, 3),
             "grpc_last_final_seconds": round(grpc_last, 3),
             "finish_server_cpu_s": finish_cpu["sse"][0],
             "finish_watchers_cpu_s": finish_cpu["sse"][1],
             "grpc_finish_server_cpu_s": finish_cpu["grpc"][0],
             "grpc_finish_watchers_cpu_s": finish_cpu["grpc"][1],
             "grpc_outcomes": grpc_watched["outcomes"],
             "largest_batch": watched["max_events"]},
        ),
    ]  # fmt: skip


def _rotate_servers(
    loads: list[tuple[str, Server, tuple[str, ...]]], rounds: int
) -> dict[str, list[dict[str, Any]]]:
    return _rotate(
        [(name, lambda server=server, args=args: unary_on(server, *args))
         for name, server, args in loads],
        rounds,
    )  # fmt: skip
