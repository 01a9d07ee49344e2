"""The benchmark script runs end to end at toy sizes, so that it cannot rot (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "status reads, 8 in flight",
    "status reads, 16 in flight",
    "listing",
    "memory: running",
    "start-up",
    "progress reports",
    "TLS and token: status reads, 64 in flight",
    "TLS and token: progress reports",
    "module watches: progress reports",
    "module watches: final states",
    "module watches: memory",
    "metrics on: status reads, 64 in flight",
    "watch fan-out: memory",
    "watch fan-out: broadcast",
    "burst",
    "shutdown",
    "recursive status",
    "memory: finished-with-TTL",
    "memory: folded",
    "pauses",
    "cluster task status",
    "finish-to-wait latency (SQLite)",
    "finish-to-wait latency (PostgreSQL)",
    "creates, journal on vs off",
    "recovery",
    "journal bytes per task",
    "HTTP listing: first pages",
    "HTTP listing: deep pages",
    "HTTP status reads, 64 in flight",
    "HTTP watch streams: progress reports",
    "HTTP watch streams: final states",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_runs_every_figure_in_the_tiny_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    figures = {f["name"]: f for f in results["figures"]}
    assert set(figures) == FIGURES
    for figure in figures.values():
        assert figure["tm"] > 0, figure
        if figure["baseline"] is not None:
            assert figure["ratio"] == pytest.approx(figure["tm"] / figure["baseline"])
    # Correctness parts of the figures hold at any size.
    assert figures["burst"]["extra"]["outcomes"] == {"final_done": 200}
    assert figures["progress reports"]["extra"]["watchers_final_done"] == 20
    assert figures["watch fan-out: broadcast"]["extra"]["final_done"] == 100
    assert figures["recursive status"]["extra"]["messages"] == 1 + 3 + 9 + 27 + 81
    assert figures["shutdown"]["extra"]["exit_code"] == 0
    assert figures["TLS and token: status reads, 64 in flight"]["extra"]["errors"] == {}
    assert figures["TLS and token: progress reports"]["extra"]["errors"] == {}
    assert figures["TLS and token: progress reports"]["extra"]["tm_call_without_token"] == (
        "UNAUTHENTICATED"
    )
    watched = figures["module watches: final states"]
    assert watched["tm"] == 10 and watched["extra"]["outcomes"] == {"final_all": 10}
    assert figures["module watches: progress reports"]["extra"]["errors"] == {}
    assert figures["module watches: memory"]["extra"]["opened"] == 100
    metrics = figures["metrics on: status reads, 64 in flight"]["extra"]
    assert metrics["errors"] == {} and metrics["calls_counted"] == metrics["calls"] > 0
    assert figures["cluster task status"]["extra"]["cluster"]["samples"] == 20
    assert figures["finish-to-wait latency (PostgreSQL)"]["extra"]["samples"] == 10
    for name in ("HTTP listing: first pages", "HTTP listing: deep pages",
                 "HTTP status reads, 64 in flight"):  # fmt: skip
        assert figures[name]["extra"]["errors"] == {}, name
    sse = figures["HTTP watch streams: final states"]
    assert sse["tm"] == 10 and sse["extra"]["outcomes"] == {"final_all": 10}
    markdown = (tmp_path / "latest.md").read_text()
    assert "| burst |" in markdown and "Profiling notes" in markdown
