"""The examples run for real: the Node.js producer and the repair demo, checked with the client."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tm_client import TaskManagerClient, TaskState
from tm_client.demo import KEYSPACES, RANGES_PER_SHARD, run_demo
from tm_client.demo_cluster import LocalCluster, run_rolling

from ..server_fixture import ServerThread

NODE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-producer"


@pytest.mark.slow
def test_node_producer_reports_a_tree(server: ServerThread, client: TaskManagerClient) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the cross-language producer test"
    assert (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run `make examples-deps` (part of `make test`) to install the example's packages"
    )
    client.set_ttl(600)
    result = subprocess.run(
        [node, str(NODE_EXAMPLE / "producer.js"), server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    root = client.get_status(out["root"])
    assert root.state is TaskState.DONE and root.module == "importer" and root.user_task
    assert (root.progress_completed, root.progress_total) == (10_000, 10_000)
    assert [str(c.task_id) for c in root.children] == out["children"]
    tree = client.get_status_recursive(out["root"])
    assert [s.entity for s in tree] == ["", "users.csv", "orders.csv", "broken.csv"]
    assert [s.state for s in tree[1:]] == [TaskState.DONE, TaskState.DONE, TaskState.FAILED]
    assert tree[3].error == "broken.csv: malformed row 4213"
    assert all(s.internal and s.parent_id == root.id for s in tree[1:])


def test_repair_demo_builds_the_documented_tree(server: ServerThread) -> None:
    with TaskManagerClient(server.target) as client:
        client.set_user_ttl(600)
        result = run_demo(server.target, shards=2, delay=0)
        assert set(result.roots) == set(KEYSPACES)
        listed = {e.keyspace: e for e in client.list_tasks("repair")}
        assert {ks: e.state for ks, e in listed.items()} == {
            "shop": TaskState.DONE,
            "metrics": TaskState.FAILED,
            "auth": TaskState.DONE,
        }
        shop = client.get_status_recursive(result.roots["shop"])
        # keyspace, 3 tables, 2 shards each; every subtree succeeded, so it folded away.
        assert [s.scope for s in shop] == ["keyspace", "table", "table", "table"]
        assert shop[0].progress_completed == shop[0].progress_total == 3 * 2 * RANGES_PER_SHARD
        metrics = client.get_status_recursive(result.roots["metrics"])
        assert "replica 10.0.0.3 unreachable" in metrics[0].error
        failed = [s for s in metrics if s.state is TaskState.FAILED]
        # The failed path is kept: keyspace -> events table -> shard 1.
        assert [(s.scope, s.table, s.entity) for s in failed] == [
            ("keyspace", "", ""),
            ("table", "events", ""),
            ("shard", "events", "shard 1"),
        ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cluster_demo_runs_a_rolling_upgrade_every_node_answers_for() -> None:
    with LocalCluster(3) as nodes:
        result = run_rolling(nodes.targets, delay=0)
        views = []
        for target in nodes.targets.values():
            with TaskManagerClient(target) as client:
                views.append(client.get_status(result.root))
        assert {(v.state, v.error) for v in views} == {
            (TaskState.FAILED, "1 of 3 nodes failed to upgrade: n3")
        }
        assert {tuple(v.children) for v in views} == {tuple(views[0].children)}
        assert {(c.task_id, c.node) for c in views[0].children} == {
            (result.children[name], name) for name in ("n1", "n2", "n3")
        }
        with TaskManagerClient(nodes.targets["n2"]) as client:
            tree = client.get_status_recursive(result.root)
            states = {s.entity: s.state for s in tree[1:]}
            assert states == {"n1": TaskState.DONE, "n2": TaskState.DONE, "n3": TaskState.FAILED}
            assert {n.name for n in client.list_nodes() if n.alive} == {"n1", "n2", "n3"}
