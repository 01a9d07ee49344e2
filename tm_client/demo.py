"""A realistic producer for demos: a repair of a few keyspaces, tables and shards, one failing.

Run it against a server (``make run`` in another shell) with ``make demo`` or
``python -m tm_client.demo --target 127.0.0.1:50051``, then watch it with
grpcurl or the client while it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

from ._client import DEFAULT_TARGET
from ._errors import TmError
from ._producer import Producer, ReportedTask

KEYSPACES = {
    "shop": ["users", "orders", "payments"],
    "metrics": ["events", "rollups"],
    "auth": ["sessions"],
}
#: The one table whose repair fails, on one shard.
FAILING = ("metrics", "events", 1)
RANGES_PER_SHARD = 8


@dataclass(frozen=True)
class DemoResult:
    """The ids of the roots the demo created, one per keyspace."""

    roots: dict[str, UUID]


def _repair_shard(table_task: ReportedTask, ks: str, table: str, shard: int, delay: float) -> None:
    with table_task.child(
        "repair",
        scope="shard",
        keyspace=ks,
        table=table,
        entity=f"shard {shard}",
        progress_units="ranges",
        total=RANGES_PER_SHARD,
    ) as task:
        for done in range(1, RANGES_PER_SHARD + 1):
            time.sleep(delay)
            if (ks, table, shard) == FAILING and done == RANGES_PER_SHARD // 2:
                raise RuntimeError(
                    f"repair of {ks}.{table} on shard {shard} failed: replica 10.0.0.3 unreachable"
                )
            task.progress(done)


def _repair_keyspace(producer: Producer, ks: str, shards: int, delay: float) -> UUID:
    tables = KEYSPACES[ks]
    root = producer.task(
        "repair",
        scope="keyspace",
        keyspace=ks,
        abortable=True,
        user_task=True,
        progress_units="ranges",
        total=len(tables) * shards * RANGES_PER_SHARD,
    )
    with root:
        failures = []
        for table in tables:
            table_task = root.child(
                "repair", scope="table", keyspace=ks, table=table, progress_units="ranges"
            )
            try:
                with table_task:
                    for shard in range(shards):
                        _repair_shard(table_task, ks, table, shard, delay)
            except RuntimeError as exc:
                failures.append(str(exc))  # the table failed; the others go on
        if failures:
            root.finish(error="; ".join(failures))
    return root.id


def run_demo(target: str, *, shards: int = 2, delay: float = 0.2) -> DemoResult:
    """Runs the repair demo against ``target`` and returns the roots' ids."""
    with Producer(target, module="repair") as producer, ThreadPoolExecutor(len(KEYSPACES)) as pool:
        futures = {
            ks: pool.submit(_repair_keyspace, producer, ks, shards, delay) for ks in KEYSPACES
        }
        return DemoResult({ks: f.result() for ks, f in futures.items()})


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="tm-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="tm server host:port")
    parser.add_argument("--shards", type=int, default=2, help="shards per table (default 2)")
    parser.add_argument(
        "--delay", type=float, default=0.2, help="seconds per repaired range (default 0.2)"
    )
    args = parser.parse_args(argv)
    try:
        result = run_demo(args.target, shards=args.shards, delay=args.delay)
    except TmError as exc:
        print(f"tm-demo: {exc}", file=sys.stderr)
        return 1
    for ks, root in result.roots.items():
        print(f"{ks}: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
