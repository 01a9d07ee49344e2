"""A three-node cluster on each store: cluster tasks and regular tasks, from every node."""

from __future__ import annotations

import json
import uuid

import pytest

from tm_client import (
    InvalidArgumentError,
    NotFoundError,
    Producer,
    TaskKind,
    TaskManagerClient,
    TaskNotAbortableError,
    TaskState,
    TaskStatus,
)

from ..process import ServerProcess, run_tm
from .cluster_fixture import Cluster, eventually, gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NODES = ("a", "b", "c")


def _same_view(status: TaskStatus) -> tuple[object, ...]:
    # What every node must agree on: the row's fields and the children's.
    return (
        status.id, status.state, status.kind, status.creation_time, status.start_time,
        status.end_time, status.error, status.progress_completed, status.progress_total,
        frozenset((c.task_id, c.node) for c in status.children), status.shard,
        status.sequence_number, status.is_abortable, status.keyspace, status.table,
    )  # fmt: skip


def test_every_node_answers_the_same_for_a_cluster_task(cluster: Cluster) -> None:
    with (
        cluster.producer("a") as pa,
        cluster.producer("b") as pb,
        cluster.producer("c") as pc,
    ):
        before = pa.create_task("compaction", scope="node")  # a regular task of the module on a
        root = pa.create_task(
            "upgrade", scope="cluster", cluster=True, keyspace="ks", progress_units="nodes"
        )
        kids = {
            name: p.create_task("upgrade", scope="node", parent=root.id, total=1, entity=name)
            for name, p in zip(NODES, (pa, pb, pc), strict=True)
        }
        kids["b"].progress(1)

        views = {}
        for name in NODES:
            with cluster.client(name) as client:
                views[name] = client.get_status(root.id)
        status = views["a"]
        assert status.kind is TaskKind.CLUSTER
        assert (status.shard, status.sequence_number) == (0, 0)
        assert status.state is TaskState.RUNNING
        assert {(c.task_id, c.node) for c in status.children} == {(kids[n].id, n) for n in NODES}
        # No progress of its own: the sum of its children's, on every node.
        assert (status.progress_completed, status.progress_total) == (1, 3)
        assert status.unreachable_nodes == ()
        for name, view in views.items():
            assert _same_view(view) == _same_view(status), name

        with cluster.client("c") as client:
            child = client.get_status(kids["b"].id)  # held by b, asked of c
            assert child.node == "b" and child.parent_id == root.id
            assert child.kind is TaskKind.NODE and not child.internal
            assert child.sequence_number > 0

            tree = client.get_status_recursive(root.id)
            assert tree[0].id == root.id
            assert {t.id for t in tree[1:]} == {k.id for k in kids.values()}

            # Listed in its module on every node, after that node's regular tasks.
            listed = [e.task_id for e in client.list_tasks("rolling")]
            assert listed == [kids["c"].id, root.id], (listed, kids["c"].id, root.id)
            assert root.id in [e.task_id for e in client.list_tasks("rolling", keyspace="ks")]
            assert root.id not in [e.task_id for e in client.list_tasks("rolling", keyspace="x")]
        with cluster.client("a") as client:
            listed = [e.task_id for e in client.list_tasks("rolling")]
            assert listed[-1] == root.id and set(listed) == {before.id, kids["a"].id, root.id}

        for kid in kids.values():
            kid.finish()
        with cluster.client("b") as client:
            # Each child leaves its node as it finishes (task_ttl is 0 here); its final
            # status is kept in the store, so the cluster task still lists it, as done.
            def all_done() -> bool:
                tree = client.get_status_recursive(root.id)[1:]
                return sorted(t.id.int for t in tree if t.state is TaskState.DONE) == sorted(
                    k.id.int for k in kids.values()
                )

            eventually(all_done, what="the finished children kept")
            status = client.get_status(root.id)
            assert {(c.task_id, c.node) for c in status.children} == {
                (kids[n].id, n) for n in NODES
            }


def test_any_node_answers_for_a_regular_task_held_by_another(cluster: Cluster) -> None:
    with cluster.producer("b") as pb:
        root = pb.create_task("repair", scope="keyspace", abortable=True)
        child = root.child("repair", scope="table")
        with cluster.client("a") as client:
            status = client.get_status(root.id)
            assert status.node == "b" and status.kind is TaskKind.NODE
            assert [c.node for c in status.children] == ["b"]
            assert [s.id for s in client.get_status_recursive(root.id)] == [root.id, child.id]
            assert [c.task_id for c in client.list_children(root.id)] == [child.id]

            client.abort(root.id, reason="maintenance")  # through a, held by b: b's producer
            assert root.wait_abort(10) and child.wait_abort(10)
            assert root.abort_reason == ("maintenance", "")  # who asked and why travel too
            aborted = client.get_status(root.id).abort
            assert aborted is not None and aborted.reason == "maintenance"

            stream = client.watch(root.id, timeout=30)
            assert next(stream).state is TaskState.RUNNING
            child.finish()
            root.finish("stopped")
            final = list(stream)[-1]
            assert final.state is TaskState.FAILED and final.node == "b"
            assert final.error == "stopped"

            with pytest.raises(NotFoundError):
                client.get_status(uuid.uuid4())


def test_abort_on_one_node_reaches_children_and_producer_everywhere(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("b") as pb, cluster.producer("c") as pc:
        root = pa.create_task("upgrade", cluster=True, abortable=True)
        on_b = pb.create_task("upgrade", parent=root.id)
        on_c = pc.create_task("upgrade", parent=root.id)
        grandchild = on_c.child("upgrade", scope="table")
        with cluster.client("c") as client:
            client.abort(root.id, reason="disk replaced")
        assert root.wait_abort(10), "the producer's session was not told"
        assert on_b.wait_abort(10) and on_c.wait_abort(10) and grandchild.wait_abort(10)
        # Why, as the producers and every node tell it: the cluster task's own
        # record, and its children's with the cluster task as the origin.
        assert root.abort_reason == ("disk replaced", "")
        assert on_b.abort_reason == ("disk replaced", "")
        with cluster.client("b") as client:
            status = client.get_status(root.id)
            assert status.abort_requested
            assert status.abort is not None and status.abort.reason == "disk replaced"
            assert status.abort.origin_task_id is None
            child = client.get_status(on_c.id)
            assert child.abort is not None and child.abort.reason == "disk replaced"
            assert child.abort.origin_task_id == root.id

        late = pb.create_task("upgrade", parent=root.id)  # under an aborted cluster task
        assert late.abort_requested

        fixed = pa.create_task("upgrade", cluster=True)  # not abortable
        with cluster.client("b") as client, pytest.raises(TaskNotAbortableError):
            client.abort(fixed.id)


def test_wait_on_one_node_ends_when_finished_through_another(cluster: Cluster) -> None:
    with cluster.producer("a") as pa, cluster.producer("b") as pb:
        done = pa.create_task("upgrade", cluster=True)
        revoked = pa.create_task("upgrade", cluster=True)
        with cluster.client("c") as client:
            stream = client.watch(done.id, timeout=30)
            assert next(stream).state is TaskState.RUNNING
            pb.attach(done.id).progress(5, 10)  # through b
            pb.attach(done.id).finish()
            seen = list(stream)
            assert seen[-1].state is TaskState.DONE and seen[-1].end_time is not None

            stream = client.watch(revoked.id, timeout=30)
            assert next(stream).state is TaskState.RUNNING
            pb.attach(revoked.id).finish(suspended=True)
            assert list(stream)[-1].state is TaskState.SUSPENDED
        with cluster.client("a") as client:
            assert client.get_status(done.id) == seen[-1]  # the same final status, any node
            assert client.get_status(done.id).progress_completed == 5


def test_children_need_a_known_cluster_parent(cluster: Cluster) -> None:
    with cluster.producer("b") as pb:
        with pytest.raises(NotFoundError):
            pb.create_task("upgrade", parent=uuid.uuid4())
        # A cluster task under a cluster task, created through different nodes.
        parent = pb.create_task("upgrade", cluster=True)
        with cluster.producer("c") as pc:
            nested = pc.create_task("upgrade", cluster=True, parent=parent.id)
        with cluster.client("a") as client:
            status = client.get_status(parent.id)
            assert [c.task_id for c in status.children] == [nested.id]
            assert client.get_status(nested.id).parent_id == parent.id


def test_nodes_are_listed_by_the_rpc_and_the_cli(cluster: Cluster) -> None:
    with cluster.client("b") as client:
        nodes = {n.name: n for n in client.list_nodes()}
    assert set(nodes) == set(NODES)
    for name, node in nodes.items():
        assert node.alive and not node.left
        assert node.address == cluster.target(name)
        assert node.started_time is not None and node.last_heartbeat_time is not None
        assert node.version

    cluster.nodes["c"].terminate()  # a clean shutdown leaves at once
    result = run_tm(cluster.target("a"), "--format", "json", "cluster", "nodes")
    assert result.returncode == 0, result.stderr
    listed = {n["name"]: n for n in json.loads(result.stdout)}
    assert listed["c"]["alive"] is False and listed["c"]["left"] is True
    assert listed["a"]["alive"] is True
    table = run_tm(cluster.target("a"), "cluster", "nodes")
    assert table.returncode == 0, table.stderr
    assert "left" in table.stdout and cluster.target("b") in table.stdout


def test_a_server_without_a_store_lists_itself_and_has_no_cluster_tasks() -> None:
    server = ServerProcess("--store", "none", "--node", "solo")
    try:
        with TaskManagerClient(server.target) as client:
            assert [(n.name, n.alive) for n in client.list_nodes()] == [("solo", True)]
        with (
            Producer(server.target, module="m") as producer,
            pytest.raises(InvalidArgumentError, match="without a cluster store"),
        ):
            producer.create_task("x", cluster=True)
    finally:
        server.kill()


def test_watchers_on_every_node_see_the_final_state(cluster: Cluster) -> None:
    with cluster.producer("a") as pa:
        task = pa.create_task("upgrade", cluster=True)
        clients = [cluster.client(n) for n in NODES]
        streams = [c.watch(task.id, timeout=30) for c in clients]
        for stream in streams:
            assert next(stream).state is TaskState.RUNNING
        task.finish("node b refused the new version")
        finals = [list(stream)[-1] for stream in streams]
        for client in clients:
            client.close()
    assert {f.state for f in finals} == {TaskState.FAILED}
    assert {f.error for f in finals} == {"node b refused the new version"}


def test_finished_cluster_tasks_are_listed_for_user_ttl_and_kept_for_the_retention(
    store_url: str,
) -> None:
    nodes = Cluster(
        store_url, ("a", "b"),
        "--user-task-ttl-in-seconds", "1", "--cluster-task-retention-seconds", "4",
    )  # fmt: skip
    try:
        with nodes.producer("a") as pa, nodes.client("b") as b:
            task = pa.create_task("upgrade", cluster=True)
            task.finish()
            assert task.id in [e.task_id for e in b.list_tasks("rolling")]
            eventually(
                lambda: task.id not in [e.task_id for e in b.list_tasks("rolling")],
                what="the listing to drop it after user_task_ttl",
            )
            assert b.get_status(task.id).state is TaskState.DONE  # the row is still there
            assert b.wait(task.id).state is TaskState.DONE

            eventually(lambda: gone(b, task.id), timeout=20, what="the retention sweep")
    finally:
        nodes.close()


def test_a_wait_behind_several_addresses_rides_out_a_node_going_away(cluster: Cluster) -> None:
    # One channel over two nodes' addresses (what a load balancer gives): the
    # stream is on node a; a goes away; the wait resumes on b and ends on the
    # final state, seen once.
    target = f"ipv4:{cluster.target('a')},{cluster.target('b')}"
    with cluster.producer("c") as pc, TaskManagerClient(target, resume_seconds=20) as client:
        task = pc.create_task("upgrade", cluster=True, total=2)
        stream = client.watch(task.id, timeout=60)
        assert next(stream).state is TaskState.RUNNING
        cluster.nodes["a"].terminate()  # its open streams end UNAVAILABLE (SHUTTING_DOWN)
        task.progress(1)
        task.finish()
        rest = list(stream)
    assert [s.state for s in rest].count(TaskState.DONE) == 1
    assert rest[-1].state is TaskState.DONE
    assert len(rest) == len(set(map(_same_view, rest)))  # no status twice
