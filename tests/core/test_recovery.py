"""Recovery of every shape the core knows, through a real journal in a temporary folder.

A registry is built on a manual clock, its journal is closed as a crash would
leave it (no shutdown of the manager: its bodies die with it), and a second
manager recovers from the files. Statuses are compared field by field.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest

from tm_server.core import (
    ManualClock,
    TaskManager,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
)
from tm_server.core.journal import SHAPE_KEY
from tm_server.core.producers import Producers, TaskSpec
from tm_server.core.record import Task
from tm_server.core.recovery import NODE_RESTARTED, RecoveredTaskImpl, recover
from tm_server.core.task import TaskShape
from tm_server.core.types import new_task_id
from tm_server.journal import FileJournal, JournalConfig
from tm_server.journal_files import JournalError, Torn, frame, merge

from ..bodies import Controlled

pytestmark = pytest.mark.timeout(60)


@dataclass
class Node:
    journal: FileJournal
    manager: TaskManager
    producers: Producers


async def start_node(folder: Path, clock: ManualClock, compact_bytes: int = 64 << 20) -> Node:
    journal = FileJournal(JournalConfig(folder, progress_window=0.01, compact_bytes=compact_bytes))
    records = journal.load()
    await journal.start()
    manager = TaskManager(
        shards=3, node="n", clock=clock, task_ttl=100, user_task_ttl=1000, journal=journal
    )
    producers = Producers(manager, lease_seconds=30)
    await recover(manager, records, producers.impl_of, producers.restore)
    await journal.commit()
    return Node(journal, manager, producers)


async def crash(node: Node) -> None:
    """What a SIGKILL leaves: whatever the journal acknowledged, nothing of the manager."""
    await node.journal.commit()
    await node.journal.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        await node.manager.close()


async def report(producers: Producers, spec: TaskSpec, session: UUID | None = None) -> UUID:
    status, _ = await producers.create_task(spec, session_id=session, start=True)
    return status.id


def same(before: TaskStatus, after: TaskStatus) -> None:
    # The pace (rate, estimated end) is not journaled: it is measured again
    # from the reports after the restart (the README says so).
    assert after._replace(extras=after.extras._replace(pace=None))._asdict() == (
        before._replace(extras=before.extras._replace(pace=None))._asdict()
    )


async def test_every_shape_comes_back_as_it_was(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    tm, prod = node.manager, node.producers
    session = prod.open_session().session.id

    # A running user task in a session, with progress, and children of every kind.
    root = await report(
        prod,
        TaskSpec("backup", "backup", "keyspace", keyspace="ks", abortable=True, user_task=True,
                 progress_units="tables", progress_total=10),
        session,
    )  # fmt: skip
    await prod.report_progress(root, 3, None)
    done = await report(prod, TaskSpec("backup", "table", parent_id=root, table="t1"))
    await prod.report_progress(done, 2, 2)
    await prod.finish_task(done, None)  # folds into the root
    failing = await report(prod, TaskSpec("backup", "table", parent_id=root, table="t2"))
    grandchild = await report(prod, TaskSpec("backup", "file", parent_id=failing, entity="f"))
    await prod.finish_task(grandchild, "disk full")
    await prod.finish_task(failing, "a file failed")  # folds with its failed child
    live = await report(prod, TaskSpec("backup", "table", parent_id=root, table="t3"), session)
    await prod.report_progress(live, 1, 4)
    public = await report(prod, TaskSpec("backup", "table", parent_id=root, internal=False))
    await prod.finish_task(public, None)  # held by its parent
    # Finished roots: one kept for its TTL, one whose TTL will pass while the node is down.
    kept = await report(prod, TaskSpec("backup", "verify", user_task=True))
    await prod.finish_task(kept, None)
    short = await report(prod, TaskSpec("backup", "cleanup"))
    await prod.finish_task(short, "gone soon")
    # An internal root, an aborted task, a task created but not started, a deep chain.
    internal = await report(prod, TaskSpec("backup", "sweep", internal=True))
    aborted = await report(prod, TaskSpec("backup", "restore", abortable=True), session)
    await tm.abort_task(aborted)
    created, _ = await prod.create_task(TaskSpec("backup", "later"))
    chain = [root]
    for _ in range(1500):
        chain.append(await report(prod, TaskSpec("backup", "link", parent_id=chain[-1])))
    await prod.report_progress(chain[-1], 5, 5)
    # A body that runs inside the server: it cannot survive the restart.
    await tm.register_module("repair")
    body = await tm.create_task("repair", Controlled(user_task=True))
    await body.start()
    expired = await tm.get_status(short)

    # Folded and held children are not registered: the tree below compares them.
    ids = [root, live, kept, internal, aborted, created.id, *chain[1:]]
    before = {i: await tm.get_status(i) for i in ids}
    tree_before = [s async for s in tm.get_status_recursive(root)]
    counts_before = await tm.task_counts()
    await asyncio.sleep(0.05)  # the progress window
    await crash(node)

    clock.advance(150)  # down longer than task_ttl (100), shorter than user_task_ttl
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    tm, prod = node.manager, node.producers
    for task_id in ids:
        same(before[task_id], await tm.get_status(task_id))
    # Tasks by module and state (metrics) are counted again, but the one whose
    # TTL ran out while the node was down, and the body the restart failed.
    counts_after = await tm.task_counts()
    expected = dict(counts_before)
    del expected[("backup", "failed")]  # the short TTL one, gone
    del expected[("repair", "running")]  # the in-server body: failed by the restart
    assert counts_after == {**expected, ("repair", "failed"): 1}
    tree_after = [s async for s in tm.get_status_recursive(root)]
    assert len(tree_after) == len(tree_before)
    for a, b in zip(tree_after, tree_before, strict=True):
        same(b, a)
    assert len(tree_before) > 1500  # the chain, walked without recursion
    with pytest.raises(TaskNotFoundError):
        await tm.get_status(short)  # its TTL passed while the node was down
    restarted = await tm.get_status(body.id)
    assert restarted.state is TaskState.FAILED and restarted.error == NODE_RESTARTED
    assert restarted.end_time == clock.now()
    assert (await tm.get_status(aborted)).abort_requested
    # Sequence numbers continue (per shard): the expired root's is not handed out again.
    again = await report(prod, TaskSpec("backup", "again", shard=expired.shard))
    numbers = [s.sequence_number for s in before.values() if s.shard == expired.shard]
    assert (await tm.get_status(again)).sequence_number == max(
        expired.sequence_number, *numbers
    ) + 1
    # The session came back with a fresh lease; resuming it pushes the pending abort.
    stream = prod.open_session(session)
    assert stream.resumed
    assert await asyncio.wait_for(stream.next_abort(), 1) == aborted
    # The tree goes on as if nothing happened.
    await prod.report_progress(live, 4, 4)
    await prod.finish_task(live, None)
    for task_id in reversed(chain[1:]):
        await prod.finish_task(task_id, None)
    final = await prod.finish_task(root, None)
    assert final.state is TaskState.DONE


async def _restarted_with_a_session_task(
    folder: Path, clock: ManualClock, nodes: list[Node]
) -> tuple[Node, UUID]:
    # A node restarted after a crash, with a running task of a producer session.
    node = await start_node(folder, clock)
    nodes.append(node)
    session = node.producers.open_session().session.id
    task = await report(node.producers, TaskSpec("backup", "backup"), session)
    await crash(node)
    node = await start_node(folder, clock)
    nodes.append(node)
    return node, task


async def test_a_session_not_resumed_after_the_restart_fails_its_tasks(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    node, task = await _restarted_with_a_session_task(tmp_path, clock, nodes)
    assert (await node.manager.get_status(task)).state is TaskState.RUNNING
    clock.advance(31)  # the fresh lease runs out
    await node.producers.settle()
    status = await node.manager.get_status(task)
    assert status.state is TaskState.FAILED and "producer lost" in status.error


async def test_a_recovered_lease_runs_from_when_the_node_serves(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    # Joining the cluster may take seconds after recovery: the producer still
    # gets the whole lease once it can reach the node.
    node, task = await _restarted_with_a_session_task(tmp_path, clock, nodes)
    clock.advance(20)  # recovered, not serving yet
    node.producers.renew_leases()  # what the server does once it serves
    clock.advance(20)
    await node.producers.settle()
    assert (await node.manager.get_status(task)).state is TaskState.RUNNING
    clock.advance(11)
    await node.producers.settle()
    assert (await node.manager.get_status(task)).state is TaskState.FAILED


async def test_finished_roots_keep_their_end_time_and_expire_on_time(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    task = await report(node.producers, TaskSpec("backup", "backup", user_task=True))
    finished = await node.producers.finish_task(task, None)
    await crash(node)
    clock.advance(600)
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    status = await node.manager.get_status(task)
    assert finished.end_time is not None
    assert (status.end_time, status.expire_time) == (finished.end_time, finished.end_time + 1000)
    clock.advance(399)
    await node.manager.get_status(task)
    clock.advance(2)
    with pytest.raises(TaskNotFoundError):
        await node.manager.get_status(task)


async def test_compaction_bounds_the_journal_and_loses_nothing(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    node = await start_node(tmp_path, clock, compact_bytes=20_000)
    nodes.append(node)
    keep = []
    for i in range(600):
        # Most tasks leave as they finish (internal roots); one in ten stays (a user task).
        spec = TaskSpec("backup", "step", user_task=True, internal=i % 10 != 0)
        task = await report(node.producers, spec)
        await node.journal.commit()  # as a reply would wait
        for done in range(5):
            await node.producers.report_progress(task, done, 5)
        await node.producers.finish_task(task, None if i % 20 else "failed")
        await node.journal.commit()
        if not spec.internal:
            keep.append(task)
    await crash(node)
    assert node.journal.stats.compactions > 0
    # A snapshot and the logs since the last compaction began (it runs in a
    # process of its own while writes go on): the replay reads the tasks, not
    # their whole history.
    assert node.journal.disk_bytes() < node.journal.stats.bytes_written / 2
    before = node.journal.disk_bytes()
    node = await start_node(tmp_path, clock, compact_bytes=20_000)
    nodes.append(node)
    states = [(await node.manager.get_status(t)).state for t in keep]
    assert states.count(TaskState.FAILED) == 30 and states.count(TaskState.DONE) == 30
    assert node.journal.disk_bytes() <= before + 1000


@pytest.mark.parametrize("internal", [None, True])
def test_a_root_rebuilt_in_bulk_is_the_task_init_would_make(internal: bool | None) -> None:
    # Recovery builds most tasks without __init__ (a million at start): every
    # slot must be set, to what __init__ and the record give.
    impl = RecoveredTaskImpl(TaskShape("backup", "node", "bytes", True, False, internal, "ann"))
    task_id = new_task_id()
    rebuilt = Task.restored_root(task_id, "m", impl, 7, TaskState.DONE, (1.5, 2.5, 3.5))
    made = Task(task_id, "m", impl, None, 7, "", "", "", None)
    made.state, made.start_time, made.end_time, made.expire_at = TaskState.DONE, 1.5, 2.5, 3.5
    assert [s for s in Task.__slots__ if not hasattr(rebuilt, s)] == []
    assert {s: getattr(rebuilt, s) for s in Task.__slots__} == {
        s: getattr(made, s) for s in Task.__slots__
    }


async def test_a_record_whose_shape_is_gone_stops_recovery_and_keeps_the_files(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    # Shapes are never deleted: a record naming one the journal lacks is damage.
    # Recovery used to drop such records and forget them, starting with an
    # empty registry and making the loss permanent.
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    await report(node.producers, TaskSpec("backup", "step", user_task=True))
    await crash(node)
    log = tmp_path / "log-00000001"
    shape = SHAPE_KEY.encode()
    lines = [line for line in _records(log.read_bytes()) if not line.startswith(shape)]
    damaged = frame(b"".join(lines))
    log.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"the journal is damaged: task .* names shape 1"):
        await start_node(tmp_path, clock)
    assert log.read_bytes() == damaged


def _records(data: bytes) -> list[bytes]:
    # Every record line of a journal file's frames, in order.
    lines: list[bytes] = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        end = newline + 1 + int(data[pos + 1 : newline].split(b" ")[1])
        lines += data[newline + 1 : end].splitlines(keepends=True)
        pos = end
    return lines


def test_a_last_frame_is_judged_torn_by_its_length_alone(tmp_path: Path) -> None:
    # Whether a broken last frame is a torn write (cut, the server starts) or
    # damage (refused) is read off the length its header claims, whatever
    # state its checksum field is in.
    whole = frame(b"a 1\n")
    last = frame(b"b 2\n")
    garbled = b"#zzzzzzzz" + last[9:]
    log = tmp_path / "log-00000001"
    log.write_bytes(whole + garbled)
    merged: dict[bytes, bytes] = {}
    with pytest.raises(Torn) as torn:
        merge(log, merged, tail_may_tear=True)
    assert torn.value.offset == len(whole)
    assert merged == {b"a": b"1"}
    log.write_bytes(whole + garbled + whole)  # a whole frame after it: damage
    with pytest.raises(JournalError, match="damaged"):
        merge(log, {}, tail_may_tear=True)


async def test_a_task_id_used_again_comes_back_as_its_second_task(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    # The second record keeps the place the id's first record was written at,
    # before the shape it names: recovery used to call that damage and refuse
    # to start, with compaction writing the snapshot in the same order.
    for compact_bytes in (64 << 20, 1):
        folder = tmp_path / str(compact_bytes)
        node = await start_node(folder, clock, compact_bytes)
        nodes.append(node)
        task_id = new_task_id()
        # Each step's reply waits for its batch (the server's durability interceptor).
        await report(node.producers, TaskSpec("backup", "first", task_id=task_id))
        await node.journal.commit()
        await node.producers.finish_task(task_id, None)
        await node.manager.unregister_task(task_id)
        await node.journal.commit()
        await report(node.producers, TaskSpec("backup", "second", task_id=task_id))
        await crash(node)
        node = await start_node(folder, clock, compact_bytes)
        nodes.append(node)
        status = await node.manager.get_status(task_id)
        assert (status.type, status.state) == ("second", TaskState.RUNNING)


async def test_an_unregistered_module_stays_unregistered(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    # Shapes outlive their tasks: recovery used to register every module a
    # shape names, so a module unregistered came back (and counted against
    # --max-modules).
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    kept = await report(node.producers, TaskSpec("backup", "step", user_task=True))
    await node.producers.finish_task(kept, None)
    await report(node.producers, TaskSpec("gone", "step", user_task=True))
    await node.journal.commit()
    await node.manager.unregister_module("gone")
    await crash(node)
    node = await start_node(tmp_path, clock)
    nodes.append(node)
    assert await node.manager.list_modules() == ["backup"]
    assert (await node.manager.get_status(kept)).state is TaskState.DONE


async def test_compaction_counts_the_logs_earlier_servers_left(
    tmp_path: Path, clock: ManualClock, nodes: list[Node]
) -> None:
    # Each start writes a log of its own: a node restarted before its log
    # reached the limit never compacted, and its replay grew with every run.
    compactions = 0
    for _ in range(8):
        node = await start_node(tmp_path, clock, compact_bytes=20_000)
        nodes.append(node)
        for _ in range(40):  # about 8 KB of records, under the limit in any one run
            task = await report(node.producers, TaskSpec("backup", "step", internal=True))
            await node.journal.commit()
            await node.producers.finish_task(task, None)
            await node.journal.commit()
        await crash(node)
        compactions += node.journal.stats.compactions
    assert compactions > 0
    logs = sorted(p.name for p in tmp_path.glob("log-*"))  # noqa: ASYNC240 (a test's listing)
    assert len(logs) <= 3, logs
