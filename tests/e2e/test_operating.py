"""Operating a real ``tm-server`` process: ``--metrics-address`` and ``--log-format json``.

The metrics are scraped over HTTP from the process and parsed by
prometheus_client's parser; the JSON log is the process's own stderr.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from tm_client import Producer, StoreUnavailableError, TaskManagerClient, TaskNotFoundError

from ..process import ServerProcess
from ..scrape import metrics_port, scrape, scrape_until
from .cluster_fixture import Cluster

pytestmark = pytest.mark.timeout(90)

TMS = "tm.v1.TaskManagerService"


def test_a_process_serves_metrics_and_logs_json_lines() -> None:
    server = ServerProcess(
        "--store", "none", "--metrics-address", "127.0.0.1:0", "--log-format", "json",
        "--task-ttl-in-seconds", "600",
    )  # fmt: skip
    try:
        port = metrics_port(server.output())
        with (
            Producer(server.target, module="backup") as producer,
            TaskManagerClient(server.target) as client,
        ):
            tasks = [producer.create_task("snapshot", abortable=True) for _ in range(3)]
            tasks[0].finish()
            tasks[1].finish()
            client.abort(tasks[2].id)
            with pytest.raises(TaskNotFoundError):
                client.get_status(uuid4())
            # grpcio sends an error's status before the handler's coroutine ends,
            # so the call is counted just after the client has its answer.
            not_found = {"service": TMS, "method": "GetTaskStatus", "code": "NOT_FOUND"}
            found = scrape_until(port, lambda m: m.value("tm_rpc_handled_total", **not_found) == 1,
                                 what="the NOT_FOUND read to be counted")  # fmt: skip
        assert found.value("tm_tasks_created_total", module="backup", type="snapshot") == 3
        done = {"module": "backup", "type": "snapshot", "outcome": "done"}
        assert found.value("tm_tasks_finished_total", **done) == 2
        assert found.value("tm_tasks", module="backup", state="done") == 2
        # No `_created` series: the families are tm's own, rendered by prometheus_client.
        assert not re.search(r"^\w+_created[{ ]", found.text, re.MULTILINE)
        assert found.value("tm_journal_failing") == 0  # the journal is on by default
        assert server.terminate() == 0
    finally:
        server.kill()
    lines = [json.loads(line) for line in server.lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    messages = [line["message"] for line in lines]
    assert any(m.startswith("tm-server listening on 127.0.0.1:") for m in messages)
    assert f"metrics on http://127.0.0.1:{port}/metrics" in messages
    audit = next(line for line in lines if line["logger"] == "tm.audit")
    assert audit["message"] == "AbortTask OK" and audit["task_id"] == str(tasks[2].id)
    assert audit["method"] == f"/{TMS}/AbortTask" and audit["peer"].startswith("ipv4:")
    assert not any(line["logger"] == "tm.rpc" for line in lines)  # INFO: no line per call


def test_a_bad_or_taken_metrics_address_stops_the_start() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "tm_server", "--metrics-address", "nowhere"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr
    server = ServerProcess("--store", "none", "--metrics-address", "127.0.0.1:0")
    try:
        port = metrics_port(server.output())
        taken = subprocess.run(
            [sys.executable, "-m", "tm_server", "--address", "127.0.0.1:0", "--store", "none",
             "--journal", "off", "--metrics-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert taken.returncode == 1
        assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in taken.stderr
    finally:
        server.kill()


@pytest.mark.slow
def test_cluster_nodes_store_calls_and_unreachable_nodes(store_url: str) -> None:
    nodes = Cluster(store_url, ("a", "b"), "--metrics-address", "127.0.0.1:0")
    try:
        port = metrics_port(nodes.nodes["a"].output())
        found = scrape_until(port, lambda m: m.value("tm_cluster_nodes", state="alive") == 2,
                             what="both nodes alive")  # fmt: skip
        assert (found.value("tm_cluster_store_duration_seconds_count", operation="heartbeat")
                or 0) >= 1  # fmt: skip
        assert found.total("tm_cluster_store_errors_total") == 0
        frozen = nodes.nodes["b"].proc
        frozen.send_signal(signal.SIGSTOP)  # alive in the store a while yet, but silent
        try:
            with nodes.client("a") as client, pytest.raises(TaskNotFoundError):
                client.get_status(uuid4())  # a asks b, which does not answer
        finally:
            frozen.send_signal(signal.SIGCONT)
        found = scrape(port)
        assert (found.value("tm_cluster_unreachable_nodes_total", operation="GetLocalStatus")
                or 0) >= 1  # fmt: skip
        nodes.nodes["b"].kill()
        found = scrape_until(port, lambda m: m.value("tm_cluster_nodes", state="down") == 1,
                             timeout=20, what="b down")  # fmt: skip
        assert found.value("tm_cluster_nodes", state="alive") == 1
    finally:
        nodes.close()


@pytest.mark.slow
def test_store_failures_are_counted_by_operation(tmp_path: Path) -> None:
    path = tmp_path / "cluster.db"
    nodes = Cluster(f"sqlite://{path}", ("a",), "--metrics-address", "127.0.0.1:0")
    try:
        port = metrics_port(nodes.nodes["a"].output())
        with nodes.producer("a", outage_seconds=1) as producer:
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # another writer holds the file past the busy timeout
            try:
                with pytest.raises(StoreUnavailableError):
                    producer.create_task("upgrade", cluster=True)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            producer.create_task("upgrade", cluster=True).finish()
        found = scrape(port)
        assert (found.value("tm_cluster_store_errors_total", operation="create_task")
                or 0) >= 1  # fmt: skip
        assert (found.value("tm_cluster_store_duration_seconds_count", operation="create_task")
                or 0) >= 2  # fmt: skip
    finally:
        nodes.close()
