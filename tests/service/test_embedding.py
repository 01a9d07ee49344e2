"""An application embeds the core, runs its own module's task tree and serves it over gRPC."""

from __future__ import annotations

import asyncio
import gc

from tm_client import AsyncTaskManagerClient, TaskState
from tm_server.core import TaskContext, TaskImpl, TaskManager
from tm_server.server import ServerConfig, TmServer


class RepairTable(TaskImpl):
    type = "repair"
    scope = "table"
    progress_units = "ranges"

    def __init__(self, ranges: int) -> None:
        self.ranges = ranges

    async def run(self, ctx: TaskContext) -> None:
        for done in range(1, self.ranges + 1):
            ctx.check_abort()
            await asyncio.sleep(0)
            await ctx.report_progress(done, self.ranges)


class RepairKeyspace(TaskImpl):
    type = "repair"
    scope = "keyspace"
    progress_units = "ranges"
    abortable = True
    user_task = True

    async def run(self, ctx: TaskContext) -> None:
        children = [
            await ctx.create_child(RepairTable(4), table=name, shard=i % 2)
            for i, name in enumerate(["users", "events", "orders"])
        ]
        for child in children:
            await child.wait()


async def test_embedded_manager_served_over_grpc() -> None:
    manager = TaskManager(shards=2, node="app-1", task_ttl=60)
    await manager.register_module("repair")
    server = TmServer(ServerConfig(address="127.0.0.1:0"), manager=manager)
    port = await server.start()
    try:
        handle = await manager.create_task("repair", RepairKeyspace(), keyspace="ks")
        await handle.start()
        async with AsyncTaskManagerClient(f"127.0.0.1:{port}", timeout=10) as client:
            final = await client.wait(handle.id, timeout=20)
            assert final.state is TaskState.DONE and final.user_task
            assert (final.progress_completed, final.progress_total) == (12, 12)
            tree = await client.get_status_recursive(handle.id)
            assert [s.table for s in tree] == ["", "users", "events", "orders"]
            assert all(s.keyspace == "ks" or s.keyspace == "" for s in tree)
            assert [s.shard for s in tree[1:]] == [0, 1, 0]
            assert {c.node for c in final.children} == {"app-1"}
            assert [e.task_id async for e in client.list_tasks("repair")] == [handle.id]
    finally:
        await server.stop()


async def test_an_embedded_server_leaves_the_collector_alone() -> None:
    # Freezing the collector is a process-wide setting: only tm-server, which
    # owns its process, turns it on by default.
    assert ServerConfig().gc_freeze_interval == 0
    gc.unfreeze()
    server = TmServer(ServerConfig(address="127.0.0.1:0"), manager=TaskManager())
    await server.start()
    try:
        junk = [object() for _ in range(1000)]
        await asyncio.sleep(0.3)  # three times tm-server's freeze interval
        assert gc.get_freeze_count() == 0
        del junk
    finally:
        await server.stop()
    asked = TmServer(ServerConfig(address="127.0.0.1:0", gc_freeze_interval=0.05))
    await asked.start()
    try:
        await asyncio.sleep(0.3)
        assert gc.get_freeze_count() > 0
    finally:
        await asked.stop()
    assert gc.get_freeze_count() == 0  # handed back on stop
