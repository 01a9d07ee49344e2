"""The examples run for real: the Node.js producer and the repair demo, checked with the client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tm_client import TaskManagerClient, TaskState, TmError
from tm_client.demo import KEYSPACES, RANGES_PER_SHARD, run_demo
from tm_client.demo_cluster import LocalCluster, run_rolling

from ..netcut import NetCut
from ..process import ServerProcess
from ..server_fixture import ServerThread
from .cluster_fixture import eventually

NODE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-producer"


def _node() -> str:
    node = shutil.which("node")
    assert node, "Node.js is needed for the cross-language producer test"
    assert (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run `make examples-deps` (part of `make test`) to install the example's packages"
    )
    return node


def _check_tree(client: TaskManagerClient, out: dict[str, object]) -> None:
    """The example's import is in tm as it documents: a root and three files, one failed."""
    root = client.get_status(str(out["root"]))
    assert root.state is TaskState.DONE and root.module == "importer" and root.user_task
    assert (root.progress_completed, root.progress_total) == (10_000, 10_000)
    assert [str(c.task_id) for c in root.children] == out["children"]
    tree = client.get_status_recursive(str(out["root"]))
    assert [s.entity for s in tree] == ["", "users.csv", "orders.csv", "broken.csv"]
    assert [s.state for s in tree[1:]] == [TaskState.DONE, TaskState.DONE, TaskState.FAILED]
    assert [s.progress_completed for s in tree[1:]] == [3000, 5000, 2000]
    assert tree[3].error == "broken.csv: malformed row 4213"
    assert all(s.internal and s.parent_id == root.id for s in tree[1:])


@pytest.mark.slow
def test_node_producer_reports_a_tree(server: ServerThread, client: TaskManagerClient) -> None:
    node = _node()
    client.set_ttl(600)
    result = subprocess.run(
        [node, str(NODE_EXAMPLE / "producer.js"), server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert UUID(out["root"]).version == 7  # chosen by the example, so its create is idempotent
    _check_tree(client, out)


@pytest.mark.slow
def test_node_producer_reports_over_mtls_with_a_token(tmp_path: Path) -> None:
    """TM_TLS_* and TM_TOKEN take the example to a server with mTLS and a tokens file."""
    from tm_client import Credentials
    from tm_server.security.tls import TlsConfig
    from tm_server.security.tokens import hash_token

    from ..certs import make_certs

    certs = make_certs(tmp_path / "pki")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        '[[principal]]\nname = "importer-job"\nroles = ["producer:importer"]\n'
        f'tokens = ["{hash_token("importer-token")}"]\n'
        '[[principal]]\nname = "ops"\nroles = ["operator"]\n'
        f'tokens = ["{hash_token("ops-token")}"]\n'
    )
    tls = TlsConfig(certs.server_cert, certs.server_key, client_ca=certs.ca)
    server = ServerThread(tls=tls, tokens=tokens, task_ttl=600, user_task_ttl=600).start()
    cert, key = certs.client("importer-host")
    try:
        env = {**os.environ, "TM_TOKEN": "importer-token", "TM_TLS_CA": str(certs.ca),
               "TM_TLS_CERT": str(cert), "TM_TLS_KEY": str(key)}  # fmt: skip
        result = subprocess.run(
            [_node(), str(NODE_EXAMPLE / "producer.js"), f"localhost:{server.port}"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        ops = Credentials(token="ops-token", ca=certs.ca, cert=cert, key=key)
        with TaskManagerClient(f"localhost:{server.port}", credentials=ops) as client:
            _check_tree(client, out)
            assert client.get_status(str(out["root"])).owner == "importer-job"
        # Without the token, the certificate alone names a principal with no roles.
        del env["TM_TOKEN"]
        refused = subprocess.run(
            [_node(), str(NODE_EXAMPLE / "producer.js"), f"localhost:{server.port}"],
            capture_output=True, text=True, timeout=60, env={**env, "TM_OUTAGE_SECONDS": "2"},
        )  # fmt: skip
        assert refused.returncode != 0 or json.loads(refused.stdout)["state"] is None
        assert "PERMISSION_DENIED" in refused.stderr or "permission" in refused.stderr.lower()
    finally:
        server.stop()


@pytest.fixture
def tm_behind_a_link() -> Iterator[tuple[ServerProcess, NetCut]]:
    """A real tm-server, and a link to it (``NetCut``) that the test can cut."""
    server = ServerProcess(
        "--store", "none", "--task-ttl-in-seconds", "600", "--user-task-ttl-in-seconds", "600"
    )
    link = NetCut(server.target)
    yield server, link
    link.close()
    server.kill()


def _start_node_producer(target: str, outage_seconds: int) -> subprocess.Popen[str]:
    env = {**os.environ, "TM_OUTAGE_SECONDS": str(outage_seconds), "IMPORT_STEP_MS": "400"}
    return subprocess.Popen(
        [_node(), str(NODE_EXAMPLE / "producer.js"), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_progress(client: TaskManagerClient) -> UUID:
    """Waits until the example's import has reported progress; its root's id."""

    def probe() -> UUID | None:
        try:
            roots = [e.task_id for e in client.list_tasks("importer")]
        except TmError:  # the module is not registered yet
            return None
        return next((r for r in roots if client.get_status(r).progress_completed > 0), None)

    return eventually(probe, timeout=30, what="the node producer's first progress")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_node_producer_rides_out_a_tm_outage(
    tm_behind_a_link: tuple[ServerProcess, NetCut],
) -> None:
    server, link = tm_behind_a_link
    proc = _start_node_producer(link.target, outage_seconds=30)
    try:
        with TaskManagerClient(server.target, timeout=10) as direct:
            root = _first_progress(direct)
            link.cut()  # in the middle of users.csv
            held = direct.get_status(root).progress_completed
            time.sleep(2.5)
            # The import went on, its progress held back, and waits for tm to finish a file.
            assert proc.poll() is None
            assert direct.get_status(root).state is TaskState.RUNNING
            assert direct.get_status(root).progress_completed == held < 10_000
            link.restore()
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
            out = json.loads(stdout)
            assert out["root"] == str(root) and out["state"] == "TASK_STATE_DONE"
            _check_tree(direct, out)
            # The session stream came back as the same session.
            assert "resumed" in stderr, stderr
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_node_producer_gives_up_reporting_after_the_outage_limit(
    tm_behind_a_link: tuple[ServerProcess, NetCut],
) -> None:
    server, link = tm_behind_a_link
    proc = _start_node_producer(link.target, outage_seconds=2)
    try:
        with TaskManagerClient(server.target, timeout=10) as direct:
            root = _first_progress(direct)
            link.cut()  # for good
            stdout, stderr = proc.communicate(timeout=60)
            # Not a crash: the import finished, and its own result is the exit status.
            assert proc.returncode == 0, stderr
            assert "tm stayed unavailable for 2s" in stderr and "producer failed" not in stderr
            out = json.loads(stdout)
            assert out["root"] == str(root) and out["state"] is None
            assert len(out["children"]) == 3
            # tm never heard the end: the session's lease will fail the tasks.
            assert direct.get_status(root).state is TaskState.RUNNING
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_node_producer_carries_on_when_tm_ended_its_tasks_during_an_outage() -> None:
    # An outage longer than the lease (1 s) but shorter than TM_OUTAGE_SECONDS:
    # tm fails the session's tasks, and the import still runs to its end.
    server = ServerProcess("--store", "none", "--task-ttl-in-seconds", "600",
                           "--user-task-ttl-in-seconds", "600",
                           "--producer-lease-seconds", "1")  # fmt: skip
    link = NetCut(server.target)
    proc = _start_node_producer(link.target, outage_seconds=30)
    try:
        with TaskManagerClient(server.target, timeout=10) as direct:
            root = _first_progress(direct)
            link.cut()  # in the middle of users.csv
            eventually(lambda: direct.get_status(root).state is TaskState.FAILED,
                       what="the lease to run out")  # fmt: skip
            link.restore()
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
            out = json.loads(stdout)
            assert out["root"] == str(root) and out["state"] == "TASK_STATE_FAILED"
            assert len(out["children"]) == 3
            assert f"tm had ended task {root}" in stderr, stderr
            assert "producer lost" in direct.get_status(root).error
    finally:
        proc.kill()
        proc.communicate()
        link.close()
        server.kill()


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
