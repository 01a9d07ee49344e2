"""Runs every benchmark, tm beside a do-nothing baseline, and writes bench/results/latest.*.

``python -m bench.run`` (``make bench``) runs the full configuration; ``--tiny``
runs every figure at a toy size so that the script cannot rot (``make test``).
Every figure is a ratio taken in one run, since absolute numbers move with
the machine; each server and the load generator are separate processes, and
the load generator's own CPU is reported so a reader sees which side limits.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from bench.cluster import cluster_figures
from bench.dashboard import dashboard_figures
from bench.durability import durability_figures
from bench.harness import (
    RESULTS,
    TINY,
    Config,
    ModuleWatchers,
    Scraper,
    Server,
    Watchers,
    alternating,
    counter_value,
    host_cpu_ticks,
    loadgen,
    make_security,
    median,
    rotating,
    round_ratios,
    total_errors,
    unary_on,
    write_ids,
)
from bench.http import http_figures, http_watch_figures
from bench.pauses import bench_pauses
from bench.report import MISS_ANALYSIS, PROFILE_NOTES, Figure, markdown


def bench_reads_listing_memory(cfg: Config, tmp: Path) -> list[Figure]:
    figures = []
    tm, base = Server("tm", cfg.shards), Server("baseline", cfg.shards)
    try:
        populated = tm.control("populate", kind="running", n=cfg.scale, module="bench")
        tm.control("populate", kind="running", n=cfg.small_module, module="small")
        samples = tm.control("samples", module="bench")
        base.control("prepare", status=samples["status"], page=samples["page"])
        ids = write_ids(tmp, "ids", samples["ids"])
        window = max(0.3, cfg.duration * 0.6)
        for concurrency in cfg.concurrencies:
            args = ("--method", "GetTaskStatus", "--ids-file", str(ids), "--concurrency",
                    str(concurrency), "--duration", str(window))  # fmt: skip
            ours_runs, theirs_runs = [], []
            for i in range(cfg.close_rounds):
                first, second = (tm, base) if i % 2 == 0 else (base, tm)
                a, b = unary_on(first, *args), unary_on(second, *args)
                ours_runs.append(a if first is tm else b)
                theirs_runs.append(b if first is tm else a)

            rate, base_rate = median(ours_runs, "rate"), median(theirs_runs, "rate")
            ratio = rate / base_rate
            cpu = median(ours_runs, "server_cpu_us_per_call")
            figures.append(Figure(
                f"status reads, {concurrency} in flight",
                f"GetTaskStatus of random ids, {cfg.scale:,} tasks on {cfg.shards} shards "
                f"(median of {cfg.close_rounds} alternating rounds)",
                "calls/s", rate, base_rate, ratio,
                ">= 0.9x baseline calls/s and <= 160 us server CPU a call",
                ratio >= 0.9 and cpu <= 160,
                {"server_cpu_us_per_call": cpu,
                 "baseline_server_cpu_us_per_call": median(theirs_runs, "server_cpu_us_per_call"),
                 "p99_ms": median(ours_runs, "p99_ms"),
                 "baseline_p99_ms": median(theirs_runs, "p99_ms"),
                 "client_cpu_s": median(ours_runs, "client_cpu_s"),
                 "round_ratios": round_ratios(ours_runs, theirs_runs),
                 "errors": total_errors(ours_runs)},
            ))  # fmt: skip
        walk = ("--method", "ListModuleTasks", "--concurrency", "4", "--duration",
                str(cfg.duration), "--page-size", "100")  # fmt: skip
        big = unary_on(tm, *walk, "--module", "bench")
        small = unary_on(tm, *walk, "--module", "small")
        cost = small["rate"] / big["rate"]
        figures.append(Figure(
            "listing", f"pages of 100, walked through a module of {cfg.scale:,} tasks vs one "
            f"of {cfg.small_module:,} (time per page at 4 in flight)", "ms/page",
            1e3 / big["rate"], 1e3 / small["rate"], cost,
            "a page of the big module costs <= 1.5x one of the small", cost <= 1.5,
            {"note": "baseline column: the small module",
             "big_p99_ms": big["p99_ms"], "small_p99_ms": small["p99_ms"]},
        ))  # fmt: skip
        per_task = (populated["rss_after"] - populated["rss_before"]) / cfg.scale
        figures.append(Figure(
            "memory: running", f"resident memory per running reported task at {cfg.scale:,}",
            "bytes/task", per_task, None, None, "<= 600 bytes a task", per_task <= 600,
            {"populate_us_per_task": populated["seconds"] / cfg.scale * 1e6},
        ))  # fmt: skip
        figures.append(Figure(
            "start-up", "server start to first successful call", "s", tm.first_call_seconds,
            base.first_call_seconds, tm.first_call_seconds / base.first_call_seconds,
        ))  # fmt: skip
    finally:
        tm.stop()
        base.stop()
    return figures


def bench_memory(cfg: Config, kind: str, label: str) -> Figure:
    tm = Server("tm", cfg.shards)
    try:
        populated = tm.control("populate", kind=kind, n=cfg.scale, module="bench")
    finally:
        tm.stop()
    per_task = (populated["rss_after"] - populated["rss_before"]) / cfg.scale
    return Figure(
        f"memory: {label}", f"resident memory per {label} task at {cfg.scale:,}", "bytes/task",
        per_task, None, None, "<= 600 bytes a task", per_task <= 600,
        {"populate_us_per_task": populated["seconds"] / cfg.scale * 1e6},
    )  # fmt: skip


def bench_progress(cfg: Config, tmp: Path) -> Figure:
    tm, base = Server("tm", cfg.shards), Server("baseline", cfg.shards)
    try:
        tm.control("populate", kind="running", n=cfg.progress_tasks, module="bench")
        samples = tm.control("samples", module="bench", count=cfg.progress_tasks)
        base.control("prepare", status=samples["status"])
        ids = write_ids(tmp, "progress", samples["ids"])
        watchers = {name: Watchers(server.target, ids, cfg.watchers)
                    for name, server in (("tm", tm), ("baseline", base))}  # fmt: skip
        # A figure near its target: the close figures' rounds.
        ours, theirs = alternating(
            tm, base, cfg.close_rounds, "--method", "ReportProgress", "--ids-file", str(ids),
            "--concurrency", "64", "--duration", str(cfg.duration),
        )  # fmt: skip
        tm.control("finish", module="bench")
        base.control("broadcast")
        our_watch = watchers["tm"].result()
        watchers["baseline"].result()
    finally:
        tm.stop()
        base.stop()

    rate, base_rate = median(ours, "rate"), median(theirs, "rate")
    ratio = rate / base_rate
    done = our_watch["outcomes"].get("final_done", 0)
    return Figure(
        "progress reports", f"ReportProgress on {cfg.progress_tasks:,} running tasks, "
        f"{cfg.watchers:,} watchers attached (median of {cfg.close_rounds} alternating rounds)",
        "calls/s",
        rate, base_rate, ratio,
        ">= 0.75x baseline calls/s, every watcher ends on the final state",
        ratio >= 0.75 and done == cfg.watchers,
        {"watchers_final_done": done, "watcher_outcomes": our_watch["outcomes"],
         "server_cpu_us_per_call": median(ours, "server_cpu_us_per_call"),
         "baseline_server_cpu_us_per_call": median(theirs, "server_cpu_us_per_call"),
         "client_cpu_s": median(ours, "client_cpu_s"), "errors": total_errors(ours),
         "round_ratios": round_ratios(ours, theirs)},
    )  # fmt: skip


def bench_tls_token(cfg: Config, tmp: Path) -> list[Figure]:
    # tm serves TLS and checks an operator's bearer token on every call (a
    # tokens file); the baseline serves the same TLS (the same dynamic
    # credentials) and gets the same metadata, which it ignores. The control
    # channel is a plaintext port of each server's own. No watchers are
    # attached to the progress reports: what is compared is the cost of the
    # checks on the calls themselves.
    security = make_security(tmp / "tls")
    tm = Server("tm", cfg.shards, security=security)
    base = Server("baseline", cfg.shards, security=security)
    figures = []
    try:
        tokenless = tm.refused_without_token()
        tm.control("populate", kind="running", n=cfg.tls_tasks, module="bench")
        samples = tm.control("samples", module="bench", count=cfg.progress_tasks)
        base.control("prepare", status=samples["status"])
        ids = write_ids(tmp, "tls-ids", samples["ids"])
        workloads = (
            ("status reads, 64 in flight", "GetTaskStatus", cfg.close_rounds,
             max(0.3, cfg.duration * 0.6)),
            ("progress reports", "ReportProgress", cfg.rounds, cfg.duration),
        )  # fmt: skip
        for label, method, rounds, window in workloads:
            ours, theirs = alternating(
                tm, base, rounds, "--method", method, "--ids-file", str(ids),
                "--concurrency", "64", "--duration", str(window),
            )  # fmt: skip
            rate, base_rate = median(ours, "rate"), median(theirs, "rate")
            ratio = rate / base_rate
            errors, base_errors = total_errors(ours), total_errors(theirs)
            figures.append(Figure(
                f"TLS and token: {label}",
                f"{method} at 64 in flight over TLS with a bearer token on every call, tm "
                f"checking it against a tokens file (an operator's; {cfg.tls_tasks:,} running "
                f"tasks, {len(samples['ids']):,} of them called) vs the baseline over the same "
                f"TLS (median of {rounds} alternating rounds)",
                "calls/s", rate, base_rate, ratio,
                ">= 0.85x the TLS baseline's calls/s",
                ratio >= 0.85 and not errors and not base_errors
                and tokenless == "UNAUTHENTICATED",
                {"server_cpu_us_per_call": median(ours, "server_cpu_us_per_call"),
                 "baseline_server_cpu_us_per_call": median(theirs, "server_cpu_us_per_call"),
                 "p99_ms": median(ours, "p99_ms"), "baseline_p99_ms": median(theirs, "p99_ms"),
                 "client_cpu_s": median(ours, "client_cpu_s"),
                 "baseline_client_cpu_s": median(theirs, "client_cpu_s"),
                 "round_ratios": round_ratios(ours, theirs), "errors": errors,
                 "baseline_errors": base_errors, "tm_call_without_token": tokenless},
            ))  # fmt: skip
    finally:
        tm.stop()
        base.stop()
    return figures


def _watch_memory(server: Server, ids: Path, streams: int) -> tuple[ModuleWatchers, float]:
    """Idle WatchTasks streams on module "idle": they, and the server's memory per stream."""
    rss0 = server.rss()
    watchers = ModuleWatchers(server.target, "idle", ids, streams)
    rss1 = server.rss()
    return watchers, (rss1 - rss0) / max(1, watchers.ready["opened"])


def bench_module_watch(cfg: Config, tmp: Path) -> list[Figure]:
    # Issue 15's module watches: WatchTasks streams on a module while
    # producers report progress on its running tasks (the progress-report
    # figure's load), then every task finishes and each stream must end with
    # every task's final state; and the memory of idle streams, each against
    # the baseline's bare stream (its first response, then nothing).
    tm = Server("tm", cfg.shards)
    try:
        base = Server("baseline", cfg.shards)
    except BaseException:
        tm.stop()
        raise
    try:
        tm.control("populate", kind="running", n=1, module="idle")
        idle = write_ids(tmp, "idle", tm.control("samples", module="idle", count=1)["ids"])
        our_idle, ours_mem = _watch_memory(tm, idle, cfg.watch_memory_streams)
        their_idle, theirs_mem = _watch_memory(base, idle, cfg.watch_memory_streams)
        tm.control("finish", module="idle")
        base.control("broadcast")
        idle_result, _ = our_idle.result(), their_idle.result()

        tm.control("populate", kind="running", n=cfg.progress_tasks, module="bench")
        samples = tm.control("samples", module="bench", count=cfg.progress_tasks)
        base.control("prepare", status=samples["status"])  # also re-arms the broadcast
        ids = write_ids(tmp, "watched", samples["ids"])
        ours_watch = ModuleWatchers(tm.target, "bench", ids, cfg.module_watchers)
        theirs_watch = ModuleWatchers(base.target, "bench", ids, cfg.module_watchers)
        watch_cpu0 = ours_watch.cpu()
        ours, theirs = alternating(
            tm, base, cfg.rounds, "--method", "ReportProgress", "--ids-file", str(ids),
            "--concurrency", "64", "--duration", str(cfg.duration),
        )  # fmt: skip
        # tm's watchers have nothing to read while the baseline is loaded.
        watch_cpu = ours_watch.cpu() - watch_cpu0
        start = time.monotonic()
        tm.control("finish", module="bench")
        finish_seconds = time.monotonic() - start
        watched = ours_watch.result()
        base.control("broadcast")
        theirs_watch.result()
    finally:
        tm.stop()
        base.stop()

    rate, base_rate = median(ours, "rate"), median(theirs, "rate")
    ratio = rate / base_rate
    errors = total_errors(ours)
    load_seconds = cfg.rounds * cfg.duration
    done = watched["outcomes"].get("final_all", 0)
    mem_ratio = ours_mem / theirs_mem
    n, streams = cfg.progress_tasks, cfg.module_watchers
    return [
        Figure(
            "module watches: progress reports",
            f"ReportProgress on {n:,} running tasks at 64 in flight, {streams:,} WatchTasks "
            "streams open on their module (a batch every 0.1 s, coalesced per task; each "
            "watcher keeps every task's latest state) vs the baseline's reports with as many "
            f"bare streams open (median of {cfg.rounds} alternating rounds)",
            "calls/s", rate, base_rate, ratio, ">= 0.75x baseline calls/s",
            ratio >= 0.75 and not errors,
            {"server_cpu_us_per_call": median(ours, "server_cpu_us_per_call"),
             "baseline_server_cpu_us_per_call": median(theirs, "server_cpu_us_per_call"),
             "client_cpu_s": median(ours, "client_cpu_s"),
             "watchers_cpu_share": round(watch_cpu / load_seconds, 3),
             "watch_responses": watched["responses"], "watch_events": watched["events"],
             "p99_ms": median(ours, "p99_ms"), "baseline_p99_ms": median(theirs, "p99_ms"),
             "round_ratios": round_ratios(ours, theirs), "errors": errors},
        ),
        Figure(
            "module watches: final states",
            f"then all {n:,} tasks finish: of the {streams:,} WatchTasks streams, those whose "
            "events gave every task's final state (FINISHED, or REMOVED with it)",
            "watchers", done, None, None, f"all {streams:,}", done == streams,
            {"outcomes": watched["outcomes"], "reasons": watched["reasons"],
             "tasks_missing": watched["missing"], "finish_seconds": round(finish_seconds, 3),
             "last_final_seconds": round(max(0.0, watched["last_end"] - start), 3),
             "largest_batch": watched["max_events"],
             "watchers_client_cpu_s": round(watched["client_cpu_s"], 2)},
        ),
        Figure(
            "module watches: memory",
            f"{cfg.watch_memory_streams:,} idle WatchTasks streams on a module (server memory "
            "after a full collection) vs the baseline's bare stream (one response, then "
            "nothing)", "bytes/stream", ours_mem, theirs_mem, mem_ratio,
            "<= 1.25x the baseline's bare stream",
            mem_ratio <= 1.25 and our_idle.ready["opened"] == cfg.watch_memory_streams,
            {"opened": our_idle.ready["opened"], "baseline_opened": their_idle.ready["opened"],
             "open_seconds": round(our_idle.ready["open_seconds"], 2),
             "baseline_open_seconds": round(their_idle.ready["open_seconds"], 2),
             "idle_outcomes": idle_result["outcomes"]},
        ),
    ]  # fmt: skip


def bench_metrics(cfg: Config, tmp: Path) -> list[Figure]:
    # Status reads with metrics on (--metrics-address: every RPC counted and
    # timed by an interceptor, the endpoint scraped meanwhile), against the
    # baseline; tm with metrics off is read in the same rotation, so the
    # details tell what the metrics themselves cost on this host and hour.
    started: list[Server] = []
    scraper: Scraper | None = None
    try:
        for kind, address in (("tm", "127.0.0.1:0"), ("tm", None), ("baseline", None)):
            started.append(Server(kind, cfg.shards, metrics_address=address))
        on, off, base = started
        loads: list[tuple[Server, tuple[str, ...]]] = []
        window = str(max(0.3, cfg.duration * 0.6))
        for name, server in (("on", on), ("off", off)):
            server.control("populate", kind="running", n=cfg.metrics_tasks, module="bench")
            samples = server.control("samples", module="bench", count=cfg.progress_tasks)
            ids = write_ids(tmp, f"metrics-{name}", samples["ids"])
            loads.append((server, ("--method", "GetTaskStatus", "--ids-file", str(ids),
                                   "--concurrency", "64", "--duration", window)))  # fmt: skip
        base.control("prepare", status=samples["status"])
        loads.append((base, loads[0][1]))  # the baseline answers any id
        scraper = Scraper(on.metrics_url, cfg.metrics_scrape_interval)
        counted0 = counter_value(
            scraper.scrape(), "tm_rpc_handled_total", method="GetTaskStatus", code="OK"
        )
        ours, plain, theirs = rotating(
            [functools.partial(unary_on, server, *args) for server, args in loads],
            cfg.close_rounds,
        )
        exposition = scraper.stop()
        scrapes = scraper
        scraper = None
    finally:
        if scraper is not None:
            with contextlib.suppress(OSError):
                scraper.stop()
        for server in started:
            server.stop()
    counted = (
        counter_value(exposition, "tm_rpc_handled_total", method="GetTaskStatus", code="OK")
        - counted0
    )
    calls = sum(int(r["calls"]) for r in ours)
    rate, base_rate = median(ours, "rate"), median(theirs, "rate")
    plain_rate = median(plain, "rate")
    ratio = rate / base_rate
    errors = total_errors(ours)
    return [
        Figure(
            "metrics on: status reads, 64 in flight",
            f"GetTaskStatus of random ids at 64 in flight, {cfg.metrics_tasks:,} running tasks, "
            "tm serving metrics (--metrics-address; every call counted and timed, the "
            f"endpoint scraped every {cfg.metrics_scrape_interval:g} s) vs the baseline "
            f"(median of {cfg.close_rounds} rotating rounds with tm without metrics)",
            "calls/s", rate, base_rate, ratio, ">= 0.9x baseline calls/s",
            ratio >= 0.9 and not errors and counted >= calls,
            {"metrics_off_rate": plain_rate, "on_vs_off": round(rate / plain_rate, 3),
             "off_vs_baseline": round(plain_rate / base_rate, 3),
             "server_cpu_us_per_call": median(ours, "server_cpu_us_per_call"),
             "metrics_off_server_cpu_us_per_call": median(plain, "server_cpu_us_per_call"),
             "baseline_server_cpu_us_per_call": median(theirs, "server_cpu_us_per_call"),
             "p99_ms": median(ours, "p99_ms"), "baseline_p99_ms": median(theirs, "p99_ms"),
             "client_cpu_s": median(ours, "client_cpu_s"),
             "round_ratios": round_ratios(ours, theirs),
             "calls": calls, "calls_counted": int(counted),
             "scrapes": len(scrapes.seconds), "scrape_failures": scrapes.failures,
             "scrape_ms_max": round(max(scrapes.seconds) * 1e3, 1),
             "scrape_bytes": len(exposition), "errors": errors},
        )
    ]  # fmt: skip


def _fanout(server: Server, ids: Path, streams: int, finish: dict[str, Any]) -> dict[str, Any]:
    rss0 = server.rss()
    watchers = Watchers(server.target, ids, streams)
    rss1 = server.rss()
    start = time.monotonic()
    server.control(**finish)
    result = watchers.result()
    result.update(
        open=watchers.ready,
        per_stream_bytes=(rss1 - rss0) / max(1, watchers.ready["opened"]),
        broadcast_seconds=result["last_end"] - start,
    )
    return result


def bench_fanout_burst_shutdown(cfg: Config, tmp: Path) -> list[Figure]:
    figures = []
    tm, base = Server("tm", cfg.shards), Server("baseline", cfg.shards)
    try:
        tm.control("populate", kind="running", n=2 + cfg.close_rounds, module="fan")
        samples = tm.control("samples", module="fan", count=2 + cfg.close_rounds)
        fan_ids = [write_ids(tmp, f"fan{i}", [x]) for i, x in enumerate(samples["ids"])]
        second, third = fan_ids[0], fan_ids[1]
        ours_runs, theirs_runs = [], []
        for i, ids_file in enumerate(fan_ids[2:]):
            # Which server goes first alternates, as in the other figures.
            for server in (tm, base) if i % 2 == 0 else (base, tm):
                if server is tm:
                    finish = {"name": "finish", "ids": json.loads(ids_file.read_text())}
                    ours_runs.append(_fanout(tm, ids_file, cfg.fanout_streams, finish))
                else:
                    base.control("prepare", status=samples["status"])
                    theirs_runs.append(
                        _fanout(base, ids_file, cfg.fanout_streams, {"name": "broadcast"})
                    )

        ours_mem, theirs_mem = ours_runs[0]["per_stream_bytes"], theirs_runs[0]["per_stream_bytes"]
        mem_ratio = ours_mem / theirs_mem
        ours_time = median(ours_runs, "broadcast_seconds")
        theirs_time = median(theirs_runs, "broadcast_seconds")
        time_ratio = ours_time / theirs_time
        figures.append(Figure(
            "watch fan-out: memory", f"{cfg.fanout_streams:,} WaitTask streams on one task "
            "(first round)", "bytes/stream", ours_mem, theirs_mem, mem_ratio,
            "<= 1.25x the baseline's bare stream", mem_ratio <= 1.25,
        ))  # fmt: skip
        done = min(r["outcomes"].get("final_done", 0) for r in ours_runs)
        figures.append(Figure(
            "watch fan-out: broadcast", "the task finishes: time until the last watcher has "
            f"the final status (median of {cfg.close_rounds} alternating rounds)", "s",
            ours_time, theirs_time,
            time_ratio, "<= 1.25x the baseline's broadcast of one message",
            time_ratio <= 1.25 and done == cfg.fanout_streams,
            {"final_done": done,
             "tm_rounds_s": [round(r["broadcast_seconds"], 3) for r in ours_runs],
             "baseline_rounds_s": [round(r["broadcast_seconds"], 3) for r in theirs_runs]},
        ))  # fmt: skip
        # Burst: every stream opened at once must be accepted and end on the final state.
        burst = Watchers(tm.target, second, cfg.burst_streams)
        tm.control("finish", ids=json.loads(second.read_text()))
        burst_result = burst.result()
        done = burst_result["outcomes"].get("final_done", 0)
        figures.append(Figure(
            "burst", f"{cfg.burst_streams:,} WaitTask streams opened at once", "streams ended "
            "on the final state", done, None, None, "every one accepted and ended on the "
            "final state", done == cfg.burst_streams and burst.ready["opened"] ==
            cfg.burst_streams, {"accepted": burst.ready["opened"],
                                "outcomes": burst_result["outcomes"]},
        ))  # fmt: skip
        # Shutdown with streams open.
        open_streams = Watchers(tm.target, third, cfg.fanout_streams)
        exit_seconds = tm.stop()
        ended = open_streams.result()
        figures.append(Figure(
            "shutdown", f"SIGTERM with {open_streams.ready['opened']:,} open WaitTask streams "
            "to exit", "s", exit_seconds, None, None, "reported", None,
            {"exit_code": tm.proc.returncode, "stream_outcomes": ended["outcomes"]},
        ))  # fmt: skip
    finally:
        if tm.proc.poll() is None:
            tm.stop()
        base.stop()
    return figures


def _walk(server: Server, root: str) -> dict[str, Any]:
    """One GetTaskStatusRecursive of ``root``, with the server's CPU a message."""
    cpu0 = server.cpu()
    run = loadgen("recursive", "--target", server.target, "--id", root)
    run["server_cpu_us"] = (server.cpu() - cpu0) / max(1, run["messages"]) * 1e6
    return run


def bench_recursive(cfg: Config) -> Figure:
    tm, base = Server("tm", cfg.shards), Server("baseline", cfg.shards)
    try:
        tree = tm.control("tree", module="tree", fanouts=list(cfg.tree_fanouts))
        base.control("prepare", status=tree["status"], recursive_count=tree["count"])
        root = tree["root"]
        ours_runs, theirs_runs = rotating(
            [lambda: _walk(tm, root), lambda: _walk(base, root)], cfg.rounds
        )
    finally:
        tm.stop()
        base.stop()

    rate, base_rate = median(ours_runs, "rate"), median(theirs_runs, "rate")
    ratio = rate / base_rate
    whole = all(r["messages"] == tree["count"] for r in ours_runs)
    return Figure(
        "recursive status", f"GetTaskStatusRecursive on a tree of {tree['count']:,} tasks "
        f"(depth {len(cfg.tree_fanouts)}; median of {cfg.rounds} alternating rounds)", "messages/s",
        rate, base_rate, ratio, ">= 0.7x the baseline's messages/s", ratio >= 0.7 and whole,
        {"messages": ours_runs[0]["messages"], "client_cpu_s": median(ours_runs, "client_cpu_s"),
         "server_cpu_us_per_message": median(ours_runs, "server_cpu_us"),
         "baseline_server_cpu_us_per_message": median(theirs_runs, "server_cpu_us"),
         "round_ratios": round_ratios(ours_runs, theirs_runs)},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes (for tests)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--only", nargs="*", help="run only these groups")
    args = parser.parse_args(argv)
    cfg = TINY if args.tiny else Config()
    groups: dict[str, Callable[[Path], list[Figure]]] = {
        "reads": lambda tmp: bench_reads_listing_memory(cfg, tmp),
        "progress": lambda tmp: [bench_progress(cfg, tmp)],
        "tls": lambda tmp: bench_tls_token(cfg, tmp),
        "watch": lambda tmp: bench_module_watch(cfg, tmp),
        "metrics": lambda tmp: bench_metrics(cfg, tmp),
        "fanout": lambda tmp: bench_fanout_burst_shutdown(cfg, tmp),
        "recursive": lambda tmp: [bench_recursive(cfg)],
        "memory": lambda tmp: [
            bench_memory(cfg, "ttl", "finished-with-TTL"),
            bench_memory(cfg, "folded", "folded"),
        ],
        "pauses": lambda tmp: [bench_pauses(cfg, tmp)],
        "cluster": lambda tmp: cluster_figures(tiny=args.tiny),
        "durability": lambda tmp: durability_figures(cfg, tmp),
        "http": lambda tmp: http_figures(cfg, tmp),
        "sse": lambda tmp: http_watch_figures(cfg, tmp),
        "dashboard": lambda tmp: dashboard_figures(tmp, tiny=args.tiny),
    }
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, group in groups.items():
            if args.only and name not in args.only:
                continue
            t0, (busy0, steal0) = time.monotonic(), host_cpu_ticks()
            produced = group(Path(tmp))
            busy1, steal1 = host_cpu_ticks()
            busy, steal = busy1 - busy0, steal1 - steal0
            for figure in produced:
                # CPU time the hypervisor gave to other guests while this group ran:
                # a high share marks figures taken on a contended host.
                figure.extra["host_steal_pct"] = round(100 * steal / max(1, busy + steal), 1)
            figures.extend(produced)
            print(f"bench: {name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    results = {
        "started": started,
        "tiny": args.tiny,
        "config": asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "figures": [asdict(f) for f in figures],
        "miss_analysis": {
            f.name: next((v for k, v in MISS_ANALYSIS.items() if f.name.startswith(k)), "")
            for f in figures
            if f.met is False
        },
        "profile_notes": PROFILE_NOTES,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "latest.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
