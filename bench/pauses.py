"""The pauses figure: status reads at a steady rate while the registry grows to its full size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Config, Server, total_errors, write_ids
from bench.loadgen import latency_summary
from bench.report import Figure


def _paced_reads(server: Server, ids: Path, cfg: Config, out: Path) -> subprocess.Popen[str]:
    """Starts status reads at the pauses figure's rate; returns once they are flowing."""
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "unary", "--target", server.target,
         "--method", "GetTaskStatus", "--ids-file", str(ids), "--channels", "1",
         "--concurrency", "16", "--rate", str(cfg.pause_read_rate), "--duration", "3600",
         "--stop-file", str(out.with_suffix(".stop")), "--latencies-file", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None
    json.loads(reader.stdout.readline())  # {"started": true}: connected, reading
    return reader


def _stop_reads(reader: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    out.with_suffix(".stop").touch()
    stdout, _ = reader.communicate(timeout=120)
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["latencies"] = json.loads(out.read_text())
    return result


def bench_pauses(cfg: Config, tmp: Path) -> Figure:
    # Reads at a steady rate (latency counted from when each was due) while
    # tasks are created at a steady rate that leaves the server headroom, so
    # what shows is pauses (collections, table resizes), not a saturated CPU.
    # The growth is cut into segments, and after each one the same reads go
    # for as long to a second server holding an empty registry, while the
    # growing one waits: only one server is busy at a time (two busy servers
    # overcommit 2 cores), and the two windows share the host's slow spells
    # instead of one of them catching them all (taken one after the other,
    # 100 s each, the ratio moved from 1.25x to 17.5x across runs here).
    # Each side's p99 is over all of its reads pooled, so a single pause of
    # the growing server still counts in full.
    segment = cfg.scale // cfg.pause_segments
    grow_runs: list[dict[str, Any]] = []
    empty_runs: list[dict[str, Any]] = []
    grow_seconds = 0.0
    growing, empty = Server("tm", cfg.shards), Server("tm", cfg.shards)
    try:
        ids = {}
        for name, server in (("growing", growing), ("empty", empty)):
            server.control("populate", kind="running", n=100, module="seed")
            samples = server.control("samples", module="seed", count=100)
            ids[name] = write_ids(tmp, f"seed-{name}", samples["ids"])
        for i in range(cfg.pause_segments):
            out = tmp / f"grow{i}.json"
            reader = _paced_reads(growing, ids["growing"], cfg, out)
            # Creations arrive 20 at a time between reads, as calls from producers would.
            growing.control("grow", n=segment, module="grow", chunk=20, rate=cfg.grow_rate)
            while not (grown := growing.control("grow_status"))["finished"]:
                time.sleep(0.1)
            grow_seconds += grown["seconds"]
            grow_runs.append(_stop_reads(reader, out))
            out = tmp / f"empty{i}.json"
            reader = _paced_reads(empty, ids["empty"], cfg, out)
            time.sleep(grown["seconds"])
            empty_runs.append(_stop_reads(reader, out))
        size = segment * cfg.pause_segments
    finally:
        growing.stop()
        empty.stop()
    grow_reads = [latency for run in grow_runs for latency in run["latencies"]]
    empty_reads = [latency for run in empty_runs for latency in run["latencies"]]
    ours, theirs = latency_summary(grow_reads), latency_summary(empty_reads)
    ratio = ours["p99_ms"] / theirs["p99_ms"]
    return Figure(
        "pauses", f"p99 of status reads at {cfg.pause_read_rate:g}/s while the registry grows "
        f"0 -> {size:,} tasks at {cfg.grow_rate:,.0f}/s, vs the same reads on an empty "
        f"registry for as long ({cfg.pause_segments} interleaved segments, all reads pooled)",
        "ms (p99)", ours["p99_ms"], theirs["p99_ms"], ratio,
        "<= 2x the empty registry's p99", ratio <= 2,
        {"grow_seconds": grow_seconds, "reads_during_growth": len(grow_reads),
         "reads_empty": len(empty_reads), "max_ms": ours["max_ms"],
         "empty_max_ms": theirs["max_ms"], "p50_ms": ours["p50_ms"],
         "empty_p50_ms": theirs["p50_ms"], "errors": total_errors(grow_runs)},
    )  # fmt: skip
