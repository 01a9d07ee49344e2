"""A cluster when things go wrong: nodes and producers killed, the store down, racing starts."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from tm_client import StoreUnavailableError, TaskManagerClient, TaskState, TaskStatus
from tm_server.testing.postgres import Postgres

from ..process import ServerProcess, start_producer_script
from .cluster_fixture import EXPIRY, FAST, Cluster, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_killed_node_is_unreachable_then_drops_out(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("b") as pb:
        root = pa.create_task("upgrade", cluster=True)
        on_b = pb.create_task("upgrade", parent=root.id)
        with cluster.producer("c") as pc:
            pc.create_task("upgrade", parent=root.id)
            cluster.nodes["c"].kill()  # SIGKILL: no goodbye, its heartbeat goes stale
            with cluster.client("a") as client:
                # Alive in the store but silent: named, so the reader knows it is partial.
                status = client.get_status(root.id)
                assert status.unreachable_nodes == ("c",)
                assert [(c.task_id, c.node) for c in status.children] == [(on_b.id, "b")]

                def expired() -> TaskStatus | None:
                    s = client.get_status(root.id)
                    return s if not s.unreachable_nodes else None

                started = time.monotonic()
                status = eventually(expired, timeout=EXPIRY * 5, what="c to expire")
                assert time.monotonic() - started < EXPIRY * 5
                assert [c.node for c in status.children] == ["b"]
                nodes = {n.name: n for n in client.list_nodes()}
                assert not nodes["c"].alive and not nodes["c"].left


def test_a_frozen_node_is_named_unreachable_after_the_peer_timeout(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("c") as pc:
        root = pa.create_task("upgrade", cluster=True)
        pc.create_task("upgrade", parent=root.id)
        frozen = cluster.nodes["c"].proc
        frozen.send_signal(signal.SIGSTOP)  # alive in the store a while yet, but silent
        try:
            with cluster.client("b") as client:
                started = time.monotonic()
                status = client.get_status(root.id)
                waited = time.monotonic() - started
                assert status.unreachable_nodes == ("c",) and status.children == ()
                assert waited < 5, f"the status waited {waited:.1f}s on a frozen node"
        finally:
            frozen.send_signal(signal.SIGCONT)
        with cluster.client("b") as client:
            children = eventually(lambda: client.get_status(root.id).children, what="c back")
            assert [c.node for c in children] == ["c"]


def test_a_killed_producer_fails_its_cluster_task_after_the_lease(store_url: str) -> None:
    nodes = Cluster(store_url, ("a", "b"), "--producer-lease-seconds", "1")
    try:
        proc, root_id, child_id = start_producer_script(nodes.target("a"), "cluster")
        try:
            with nodes.client("b") as client:
                status = client.get_status(root_id)
                assert status.state is TaskState.RUNNING
                assert [c.task_id for c in status.children] == [uuid.UUID(child_id)]
                stream = client.watch(root_id, timeout=30)
                assert next(stream).state is TaskState.RUNNING
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                final = list(stream)[-1]
                assert final.state is TaskState.FAILED
                assert "producer lost" in final.error and "not resumed" in final.error
        finally:
            proc.kill()
    finally:
        nodes.close()


def test_a_task_fails_once_when_the_node_holding_its_session_expires(cluster: Cluster) -> None:
    with cluster.producer("c") as pc:
        root = pc.create_task("upgrade", cluster=True)
        with cluster.client("a") as a, cluster.client("b") as b:
            stream = a.watch(root.id, timeout=30)
            assert next(stream).state is TaskState.RUNNING
            cluster.nodes["c"].kill()
            final = list(stream)[-1]
            assert final.state is TaskState.FAILED
            assert "left the cluster" in final.error
            assert b.get_status(root.id) == a.get_status(root.id)  # failed once, one error


def test_two_nodes_start_at_once_on_an_empty_store(store_url: str) -> None:
    started: dict[str, ServerProcess] = {}

    def start(name: str) -> None:
        started[name] = ServerProcess("--node", name, "--store", store_url, *FAST)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    nodes = Cluster.__new__(Cluster)
    nodes.store, nodes.extra, nodes.nodes = store_url, (), started
    try:
        assert all(p.port for p in started.values()), [p.output() for p in started.values()]
        with nodes.producer("a") as pa, nodes.client("b") as b:
            root = pa.create_task("upgrade", cluster=True)
            assert b.get_status(root.id).state is TaskState.RUNNING
            assert {n.name for n in b.list_nodes() if n.alive} == {"a", "b"}
    finally:
        nodes.close()


def test_a_live_nodes_name_is_refused_and_a_wildcard_cannot_be_advertised(
    store_url: str,
) -> None:
    nodes = Cluster(store_url, ("a",))
    try:
        twin = ServerProcess("--node", "a", "--store", store_url, *FAST)
        assert twin.proc.wait(30) != 0
        assert "a live node named 'a' is in the cluster store" in twin.output()
        wild = ServerProcess(
            "--node", "w", "--store", store_url, "--address", "0.0.0.0:0", "--insecure", *FAST
        )  # fmt: skip
        assert wild.proc.wait(30) != 0
        assert "--advertise-address" in wild.output()

        nodes.nodes["a"].terminate()  # left cleanly: the name is free again at once
        again = nodes.start("a")
        assert again.port

        # Killed, its row looks alive until it expires; restarted at once, it does
        # not answer at its old address, so the restart takes the name over.
        again.kill()
        restarted = nodes.start("a")
        assert restarted.port, restarted.output()
        assert "does not answer; taking its name over" in restarted.output()
        with nodes.client("a") as client:
            listed = [(n.name, n.alive, n.address) for n in client.list_nodes()]
        assert listed == [("a", True, restarted.target)]
    finally:
        nodes.close()


def test_postgres_restarting_fails_calls_cleanly_then_they_work_again() -> None:
    pg = Postgres()
    nodes = Cluster(pg.url, ("a", "b"))
    try:
        # outage_seconds=1: the producer's create gives up soon, so the error is seen.
        with nodes.producer("a", outage_seconds=1) as pa, nodes.client("b") as b:
            before = pa.create_task("upgrade", cluster=True)
            pg.stop()
            with pytest.raises(StoreUnavailableError) as caught:
                b.get_status(before.id)
            assert caught.value.reason == "STORE_UNAVAILABLE"
            with pytest.raises(StoreUnavailableError):
                pa.create_task("upgrade", cluster=True)
            # Regular tasks keep working, on every node.
            regular = pa.create_task("compaction")
            assert b.get_status(regular.id).node == "a"
            regular.finish()

            time.sleep(8)  # longer than the pool's reconnect attempt, whose delays double
            pg.start()
            # Back within seconds of the server, however long the outage was.
            status = eventually(
                lambda: _status_or_none(b, before.id), timeout=6, what="the store back"
            )
            assert status.state is TaskState.RUNNING
            after = pa.create_task("upgrade", cluster=True)
            stream = b.watch(after.id, timeout=30)
            assert next(stream).state is TaskState.RUNNING
            after.finish()
            assert list(stream)[-1].state is TaskState.DONE
    finally:
        nodes.close()
        pg.close()


def _status_or_none(client: TaskManagerClient, task_id: uuid.UUID) -> TaskStatus | None:
    try:
        return client.get_status(task_id)
    except StoreUnavailableError:
        return None


def test_a_locked_sqlite_store_fails_writes_cleanly_then_they_work_again(tmp_path: Path) -> None:
    path = tmp_path / "cluster.db"
    nodes = Cluster(f"sqlite://{path}", ("a",))
    try:
        with nodes.producer("a", outage_seconds=1) as pa:
            before = pa.create_task("upgrade", cluster=True)
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # another writer holds the file past the busy timeout
            try:
                with pytest.raises(StoreUnavailableError):
                    pa.create_task("upgrade", cluster=True)
                regular = pa.create_task("compaction")  # regular tasks keep working
                regular.finish()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            after = pa.create_task("upgrade", cluster=True)
            before_handle = pa.attach(before.id)
            before_handle.finish()
            after.finish()
            with nodes.client("a") as a:
                assert a.get_status(before.id).state is TaskState.DONE
    finally:
        nodes.close()
