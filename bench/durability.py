"""The journal's figures: creates with it on against off, recovery time, bytes per task.

Progress reports with the journal on are the ``progress reports`` figure
itself (every tm server of the run keeps its journal, as tm-server does).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import Config, Server, alternating, median, round_ratios, total_errors
from bench.report import Figure

#: What recovery of a million tasks may take here, at most.
RECOVERY_TARGET_SECONDS = 10.0


def bench_creates(cfg: Config) -> Figure:
    """CreateTask (started, producer-chosen ids) with the journal on, against it off."""
    on, off = Server("tm", cfg.shards), Server("tm-no-journal", cfg.shards)
    try:
        on_runs, off_runs = alternating(
            on, off, cfg.rounds, "--method", "CreateTask", "--module", "creates",
            "--concurrency", "64", "--duration", str(cfg.duration),
        )  # fmt: skip
        journal = on.control("journal")
    finally:
        on.stop()
        off.stop()
    rate, off_rate = median(on_runs, "rate"), median(off_runs, "rate")
    ratio = rate / off_rate
    return Figure(
        "creates, journal on vs off",
        "CreateTask (started, client-chosen id), 64 in flight, journal on against --journal "
        f"off (median of {cfg.rounds} alternating rounds)",
        "calls/s",
        rate, off_rate, ratio,
        ">= 0.5x the journal-off calls/s (group commit: one disk flush per batch)",
        ratio >= 0.5,
        {"batches": journal.get("batches"), "records": journal.get("records"),
         "calls_per_batch": round(sum(int(r["calls"]) for r in on_runs)
                                  / max(1, int(journal.get("batches", 0))), 1),
         "p99_ms": median(on_runs, "p99_ms"),
         "off_p99_ms": median(off_runs, "p99_ms"),
         "errors": total_errors(on_runs),
         "round_ratios": round_ratios(on_runs, off_runs)},
    )  # fmt: skip


def bench_recovery(cfg: Config, tmp: Path) -> list[Figure]:
    """A registry of ``cfg.scale`` finished tasks, stopped, then started again on its files."""
    data = Path(tempfile.mkdtemp(prefix="recovery-", dir=tmp))
    empty = Server("tm", cfg.shards)
    fresh_start = empty.first_call_seconds
    empty.stop()
    server = Server("tm", cfg.shards, data_dir=data)
    try:
        server.control("populate", kind="ttl", n=cfg.scale, module="recovery")
        journal = server.control("journal")
    finally:
        server.stop()
    on_disk = sum(f.stat().st_size for f in (data / "journal").iterdir())
    again = Server("tm", cfg.shards, data_dir=data)
    try:
        restart = again.first_call_seconds
        registered = int(again.control("registered")["tasks"])
        seconds = float(again.control("journal")["recovery_seconds"])
    finally:
        again.stop()
    return [
        Figure(
            "recovery",
            f"start on a journal of {cfg.scale:,} finished tasks (TTL pending): reading the "
            "journal and rebuilding the registry (the server's own timer; the extras have the "
            "time to the first answered call against a start on an empty data directory)",
            "s",
            seconds,
            None,
            None,
            f"<= {RECOVERY_TARGET_SECONDS:g} s for 1,000,000 tasks",
            seconds <= RECOVERY_TARGET_SECONDS * cfg.scale / 1_000_000 and registered >= cfg.scale,
            {
                "restart_s": round(restart, 2),
                "empty_start_s": round(fresh_start, 2),
                "compactions": journal.get("compactions"),
            },
        ),
        Figure(
            "journal bytes per task",
            f"journal files on disk after {cfg.scale:,} tasks were created, started and "
            "finished (snapshot and logs)",
            "bytes/task",
            on_disk / cfg.scale,
            None,
            None,
            "reported",
            None,
            {"bytes_on_disk": on_disk, "bytes_written": journal.get("bytes_written")},
        ),
    ]


def durability_figures(cfg: Config, tmp: Path) -> list[Figure]:
    """The durability group of ``make bench``."""
    return [bench_creates(cfg), *bench_recovery(cfg, tmp)]
