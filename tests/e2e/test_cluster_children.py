"""Children of cluster tasks outlive their node: their final statuses are kept in the store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from tm_client import Producer, TaskManagerClient, TaskState, TaskStatus, TestServiceClient
from tm_server.cluster import sqlite as sqlite_store
from tm_server.cluster.children import FinishedChild, FinishedChildren
from tm_server.cluster.sqlite import SqliteStore
from tm_server.cluster.store import ClusterTaskRow
from tm_server.core import Progress
from tm_server.core import TaskKind as Kind
from tm_server.core import TaskState as State
from tm_server.core import TaskStatus as Status
from tm_server.testing.postgres import Postgres

from .cluster_fixture import Cluster, eventually, gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _tree(client: TaskManagerClient, root: uuid.UUID) -> dict[uuid.UUID, TaskStatus]:
    tree = client.get_status_recursive(root)
    assert tree[0].id == root
    ids = [s.id for s in tree]
    assert len(ids) == len(set(ids)), ids  # a child seen live and kept is listed once
    return {s.id: s for s in tree[1:]}


def _kept(client: TaskManagerClient, root: uuid.UUID, *ids: uuid.UUID) -> bool:
    # The children are written in the background as they finish: kept once all show final.
    tree = _tree(client, root)
    return all(i in tree and tree[i].state.is_final for i in ids)


def _finish_two_on(producer: Producer, root: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """A child that succeeds and one that fails, each with progress; their ids."""
    done = producer.create_task("upgrade", scope="node", parent=root, total=2, entity="ok")
    failed = producer.create_task("upgrade", scope="node", parent=root, total=3, entity="bad")
    done.progress(2)
    done.finish()
    failed.progress(1)
    failed.finish("disk full")
    return done.id, failed.id


def _check_kept(status: TaskStatus, tree: dict[uuid.UUID, TaskStatus], done: uuid.UUID,
                failed: uuid.UUID, node: str) -> None:  # fmt: skip
    assert (done, node) in {(c.task_id, c.node) for c in status.children}
    assert (failed, node) in {(c.task_id, c.node) for c in status.children}
    ok, bad = tree[done], tree[failed]
    assert (ok.state, ok.error, ok.node, ok.entity) == (TaskState.DONE, "", node, "ok")
    assert (bad.state, bad.error, bad.node, bad.entity) == (TaskState.FAILED, "disk full", node,
                                                            "bad")  # fmt: skip
    assert ok.parent_id == bad.parent_id == status.id
    assert (ok.progress_completed, ok.progress_total) == (2, 2)
    assert (bad.progress_completed, bad.progress_total) == (1, 3)
    assert ok.expire_time == status.expire_time  # their cluster task's (None while it runs)


def test_finished_children_outlive_their_stopped_node(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("b") as pb, cluster.producer("c") as pc:
        root = pa.create_task("upgrade", cluster=True, progress_units="steps")
        running = pc.create_task("upgrade", parent=root.id, total=4)
        running.progress(1)
        done, failed = _finish_two_on(pb, root.id)
        # Stopped at once: its stop writes what it has not written yet.
        cluster.nodes["b"].terminate()
        with cluster.client("a") as client:
            status = client.get_status(root.id)
            assert status.unreachable_nodes == ()  # b left: it is not asked
            assert status.children_count == 3 and len(status.children) == 3
            assert (running.id, "c") in {(c.task_id, c.node) for c in status.children}
            # The roll-up still counts b's children: 2/2 + 1/3, with c's live 1/4.
            assert (status.progress_completed, status.progress_total) == (4, 9)
            tree = _tree(client, root.id)
            assert set(tree) == {done, failed, running.id}
            assert tree[running.id].state is TaskState.RUNNING and tree[running.id].node == "c"
            _check_kept(status, tree, done, failed, "b")
            assert [c.task_id for c in client.list_children(root.id)] == sorted(
                (done, failed, running.id), key=lambda i: i.int
            )
        with cluster.client("c") as client:
            assert client.get_status(root.id).children == status.children  # any node alike
            # b is gone, yet its finished children still answer by their own ids,
            # a wait on one included: their final status is in the store.
            own = client.get_status(failed)
            assert own.state is TaskState.FAILED and own.node == "b" and own.parent_id == root.id
            assert [s.state for s in client.watch(done, timeout=10)] == [TaskState.DONE]

        running.finish()
        root.finish()
        with cluster.client("c") as client:
            final = client.get_status(root.id)
            assert final.state is TaskState.DONE
            assert final.children_count == 3
            assert (final.progress_completed, final.progress_total) == (4, 9)  # 1/4 reported
            eventually(lambda: _kept(client, root.id, running.id), what="c's child kept")
            # Kept children last as long as their cluster task's row, not their node's TTL.
            tree = _tree(client, root.id)
            assert final.expire_time is not None
            assert {tree[i].expire_time for i in (done, failed, running.id)} == {final.expire_time}


def test_finished_children_outlive_a_killed_node(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("b") as pb:
        root = pa.create_task("upgrade", cluster=True)
        lost = pb.create_task("upgrade", parent=root.id)  # unfinished: it dies with b
        done, failed = _finish_two_on(pb, root.id)
        with cluster.client("a") as client:
            eventually(lambda: _kept(client, root.id, done, failed), what="b's children kept")
            cluster.nodes["b"].kill()  # SIGKILL: no goodbye
            status = client.get_status(root.id)
            assert status.unreachable_nodes == ("b",)  # alive in the store, but silent
            assert {c.task_id for c in status.children} == {done, failed}
            assert lost.id not in _tree(client, root.id)
            assert (status.progress_completed, status.progress_total) == (3, 5)
            _check_kept(status, _tree(client, root.id), done, failed, "b")


def test_a_child_its_nodes_clean_stop_ends_is_kept(store_url: str) -> None:
    # A child whose body runs inside its node ends with that node's stop: its
    # final status must still reach the store, so the node's stop may close
    # the store only after its own tasks have ended.
    nodes = Cluster(store_url, ("a", "b"), "--enable-test-service")
    try:
        with nodes.producer("a") as pa, TestServiceClient(nodes.target("b")) as tb:
            root = pa.create_task("upgrade", cluster=True)
            child = tb.create_task(parent_id=root.id)
            assert nodes.nodes["b"].terminate() == 0
            with nodes.client("a") as a:
                status = _tree(a, root.id).get(child)
                assert status is not None, "the child ended by b's stop was not kept"
                assert (status.state, status.node) == (TaskState.FAILED, "b")
                assert status.error == "task cancelled: the server is shutting down"
                assert (child, "b") in {(c.task_id, c.node) for c in a.get_status(root.id).children}
    finally:
        nodes.close()


def _kept_rows(store_url: str) -> int:
    query = "SELECT COUNT(*) FROM tm_cluster_children"
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as db:
            return int(db.execute(query).fetchone()[0])
    with psycopg.connect(store_url) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def test_kept_children_go_with_their_cluster_task(store_url: str) -> None:
    nodes = Cluster(store_url, ("a", "b"), "--cluster-task-retention-seconds", "1")
    try:
        with nodes.producer("a") as pa, nodes.producer("b") as pb, nodes.client("a") as a:
            root = pa.create_task("upgrade", cluster=True)
            kept = pa.create_task("upgrade", cluster=True)  # still running: never swept
            _finish_two_on(pb, root.id)
            child = pb.create_task("upgrade", parent=kept.id)
            child.finish()
            eventually(lambda: _kept_rows(store_url) == 3, what="the children kept")
            root.finish()

            eventually(lambda: gone(a, root.id), timeout=20, what="the retention sweep")
            assert _kept_rows(store_url) == 1  # the running task's child stays
            assert [c.task_id for c in a.get_status(kept.id).children] == [child.id]
    finally:
        nodes.close()


def test_a_child_finished_while_postgres_is_down_is_kept_once_it_is_back() -> None:
    pg = Postgres()
    nodes = Cluster(pg.url, ("a", "b"))
    try:
        with nodes.producer("a") as pa, nodes.producer("b") as pb:
            root = pa.create_task("upgrade", cluster=True)
            child = pb.create_task("upgrade", parent=root.id)
            pg.stop()
            child.finish("failed in the outage")  # a regular task: no store needed
            time.sleep(2)  # a few failed writes, retried
            pg.start()
            with nodes.client("a") as a:

                def kept() -> TaskStatus | None:
                    try:
                        return _tree(a, root.id).get(child.id)
                    except Exception:  # the store is on its way back
                        return None

                status = eventually(kept, timeout=30, what="the child kept after the outage")
            assert (status.state, status.error, status.node) == (
                TaskState.FAILED, "failed in the outage", "b",
            )  # fmt: skip
            assert "cannot keep 1 finished children" in nodes.nodes["b"].output()  # retried
            nodes.nodes["b"].kill()
            with nodes.client("a") as a:
                assert _tree(a, root.id)[child.id].state is TaskState.FAILED
    finally:
        nodes.close()
        pg.close()


# ---- the writer on its own, in this process, on a real SQLite file ---------------------------


def _row(task_id: str) -> ClusterTaskRow:
    return ClusterTaskRow(
        id=task_id, parent_id=None, module="m", type="t", scope="", keyspace="", tbl="",
        entity="", state="running", error="", abortable=False, user_task=False,
        abort_requested=False, progress_units="", progress_completed=None, progress_total=None,
        created_at=0.0, started_at=None, ended_at=None, session_id=None, session_node=None,
        version=0,
    )  # fmt: skip


def _child(parent: uuid.UUID) -> Status:
    return Status(
        id=uuid.uuid4(), type="t", kind=Kind.NODE, scope="", state=State.FAILED,
        is_abortable=False, creation_time=1.5, start_time=2.0, end_time=3.25, error="e",
        parent_id=parent, sequence_number=1, shard=0, keyspace="", table="", entity="",
        progress_units="", progress=Progress(1, 2), module="m", node="b",
    )  # fmt: skip


async def _nothing() -> None:
    return None


async def test_the_writer_retries_a_locked_store_then_flushes_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)  # a locked write fails fast
    path = tmp_path / "cluster.db"
    store = SqliteStore(f"sqlite://{path}", path)
    await store.open()
    try:
        parent = uuid.uuid4()
        await store.create_task(_row(str(parent)))
        writer = FinishedChildren(store, _nothing, keep_trying=60)
        other = uuid.uuid4()  # another group's virtual task
        writer.seen(other, False)
        writer.add(other, _child(other))
        assert writer.pending == 0

        lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        status = _child(parent)
        writer.add(parent, status)
        await asyncio.sleep(0.5)  # a few tries, all refused
        assert writer.pending == 1
        assert "cannot keep 1 finished children" in caplog.text
        # Shown from memory meanwhile (readers still read the WAL file).
        assert (await writer.of(parent))[status.id].status() == status

        asyncio.get_running_loop().call_later(0.3, lock.rollback)
        await writer.close(grace=5)  # the stop waits for the store to take it
        assert writer.pending == 0
        rows = await store.finished_children(str(parent))
        assert [FinishedChild.kept(r).status() for r in rows] == [status]
        assert (rows[0].node, rows[0].progress_completed, rows[0].progress_total) == ("b", 1, 2)
        lock.close()

        late = FinishedChildren(store, _nothing, keep_trying=0.3)
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        late.add(parent, _child(parent))
        await asyncio.sleep(1)
        assert late.pending == 0 and "gave up keeping 1 finished children" in caplog.text
        lock.rollback()
        lock.close()
        await late.close()
        assert len(await store.finished_children(str(parent))) == 1
    finally:
        await store.close()
