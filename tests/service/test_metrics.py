"""Metrics of a real server on 127.0.0.1:0, scraped over real HTTP.

Each test asserts a value an operator relies on, read back through
prometheus_client's own parser from the server's ``/metrics`` endpoint.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest

from tm_client import Producer, TaskManagerClient, TaskNotFoundError
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.core import TaskManager
from tm_server.security.tokens import hash_token
from tm_server.server import ServerConfig, TmServer

from ..bodies import Controlled
from ..scrape import Scrape, fetch, scrape, scrape_until
from ..server_fixture import ServerThread

pytestmark = pytest.mark.timeout(60)

TMS = "tm.v1.TaskManagerService"
REPORTING = "tm.v1.TaskReportingService"


def metered_server(**config: object) -> ServerThread:
    return ServerThread(metrics_address="127.0.0.1:0", **config).start()


def port_of(server: ServerThread) -> int:
    assert server.server is not None
    return server.server.metrics_port


@pytest.fixture
def metered() -> Iterator[ServerThread]:
    server = metered_server(task_ttl=600)
    yield server
    server.stop()


def rpc(found: Scrape, method: str, code: str, service: str = TMS) -> float | None:
    return found.value("tm_rpc_handled_total", service=service, method=method, code=code)


# ---- tasks ---------------------------------------------------------------------------------


def test_tasks_created_finished_and_registered_by_state(metered: ServerThread) -> None:
    port = port_of(metered)
    with Producer(metered.target, module="backup") as producer:
        tasks = [producer.create_task("snapshot") for _ in range(3)]
        tasks[0].finish()
        tasks[1].finish()
        found = scrape(port)
        assert found.value("tm_tasks_created_total", module="backup", type="snapshot") == 3
        done = {"module": "backup", "type": "snapshot", "outcome": "done"}
        assert found.value("tm_tasks_finished_total", **done) == 2
        assert found.value("tm_tasks_finished_total", **{**done, "outcome": "failed"}) is None
        assert found.value("tm_task_duration_seconds_count", module="backup", type="snapshot") == 2
        by_state = {s["state"]: found.value("tm_tasks", **s) for s in found.labels("tm_tasks")
                    if s["module"] == "backup"}  # fmt: skip
        assert by_state == {"created": 0, "running": 1, "done": 2, "failed": 0}
    # Closing the session fails the task it left unfinished.
    found = scrape(port)
    failed = {"module": "backup", "type": "snapshot", "outcome": "failed"}
    assert found.value("tm_tasks_finished_total", **failed) == 1
    assert found.value("tm_tasks", module="backup", state="running") == 0
    assert found.value("tm_tasks", module="backup", state="failed") == 1


def test_tasks_past_their_ttl_are_counted_as_expired() -> None:
    server = metered_server(task_ttl=1)
    try:
        with Producer(server.target, module="backup", session=False) as producer:
            for _ in range(2):
                producer.create_task("snapshot").finish()
            producer.create_task("snapshot")  # running: it stays
        found = scrape_until(
            port_of(server),
            lambda m: m.value("tm_tasks_expired_total", module="backup") == 2,
            what="two expiries",
        )
        assert found.value("tm_tasks", module="backup", state="done") == 0
        assert found.value("tm_tasks", module="backup", state="running") == 1
    finally:
        server.stop()


def test_each_server_counts_into_its_own_registry(metered: ServerThread) -> None:
    other = metered_server()
    try:
        with Producer(metered.target, module="backup", session=False) as producer:
            producer.create_task("snapshot")
        assert (
            scrape(port_of(metered)).value(
                "tm_tasks_created_total", module="backup", type="snapshot"
            )
            == 1
        )
        assert scrape(port_of(other)).labels("tm_tasks_created_total") == []
    finally:
        other.stop()


# ---- RPCs ----------------------------------------------------------------------------------


def test_failed_rpcs_are_counted_with_their_code(metered: ServerThread) -> None:
    with (
        TaskManagerClient(metered.target) as client,
        grpc.insecure_channel(metered.target) as channel,
    ):
        with pytest.raises(TaskNotFoundError):
            client.get_status(uuid4())
        stub = pb_grpc.TaskManagerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id="not-an-id"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        client.list_modules()
    found = scrape(port_of(metered))
    assert rpc(found, "GetTaskStatus", "NOT_FOUND") == 1
    assert rpc(found, "GetTaskStatus", "INVALID_ARGUMENT") == 1
    assert rpc(found, "GetTaskStatus", "OK") == 0
    assert rpc(found, "ListModules", "OK") == 1
    assert found.value("tm_rpc_duration_seconds_count", service=TMS, method="GetTaskStatus") == 2
    # A unary method has no open-streams series.
    assert {s["method"] for s in found.labels("tm_rpc_streams_open")} <= {"OpenSession"}


def test_calls_refused_by_the_access_checks_are_counted(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[principal]]\nname = "ops"\nroles = ["operator"]\n'
        f'tokens = ["{hash_token("ops-token")}"]\n'
    )
    server = metered_server(tokens=tokens)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.TaskManagerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModules(pb.ListModulesRequest())
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            stub.ListModules(
                pb.ListModulesRequest(), metadata=(("authorization", "Bearer ops-token"),)
            )
        found = scrape(port_of(server))
        assert rpc(found, "ListModules", "UNAUTHENTICATED") == 1
        assert rpc(found, "ListModules", "OK") == 1
    finally:
        server.stop()


def test_an_open_wait_stream_is_in_the_gauge_until_it_ends(metered: ServerThread) -> None:
    port = port_of(metered)
    with (
        Producer(metered.target, module="backup") as producer,
        grpc.insecure_channel(metered.target) as channel,
    ):
        stub: Any = pb_grpc.TaskManagerServiceStub(channel)  # streams read loosely
        task = producer.create_task("snapshot")
        finals: list[int] = []

        def wait() -> None:
            for reply in stub.WaitTask(pb.WaitTaskRequest(task_id=str(task.id)), timeout=30):
                finals.append(reply.status.state)

        waiter = threading.Thread(target=wait)
        waiter.start()
        open_waits = {"service": TMS, "method": "WaitTask"}
        scrape_until(port, lambda m: m.value("tm_rpc_streams_open", **open_waits) == 1,
                     what="the wait in the gauge")  # fmt: skip
        # A second wait, which the client cancels.
        cancelled = stub.WaitTask(pb.WaitTaskRequest(task_id=str(task.id)), timeout=30)
        next(cancelled)
        scrape_until(port, lambda m: m.value("tm_rpc_streams_open", **open_waits) == 2)
        cancelled.cancel()
        scrape_until(port, lambda m: rpc(m, "WaitTask", "CANCELLED") == 1,
                     what="the cancelled wait counted")  # fmt: skip
        task.finish()
        waiter.join(10)
        assert finals[-1] == pb.TASK_STATE_DONE
        found = scrape_until(port, lambda m: m.value("tm_rpc_streams_open", **open_waits) == 0,
                             what="the gauge back to 0")  # fmt: skip
        assert rpc(found, "WaitTask", "OK") == 1
        # The producer's own session stream is open meanwhile.
        assert found.value("tm_rpc_streams_open", service=REPORTING, method="OpenSession") == 1


# ---- producers -----------------------------------------------------------------------------


def test_sessions_by_state_and_lease_expiries() -> None:
    server = metered_server(producer_lease_seconds=1.0)
    port = port_of(server)
    try:
        with grpc.insecure_channel(server.target) as channel:
            reporting: Any = rpb_grpc.TaskReportingServiceStub(channel)
            stream = reporting.OpenSession(rpb.OpenSessionRequest(), timeout=30)
            assert next(stream).opened.session_id
            found = scrape(port)
            assert found.value("tm_producer_sessions", state="connected") == 1
            assert found.value("tm_producer_sessions", state="disconnected") == 0
            assert found.value("tm_producer_lease_expiries_total") == 0
            stream.cancel()  # the stream breaks: the lease runs
            scrape_until(port, lambda m: m.value("tm_producer_sessions", state="disconnected") == 1,
                         what="the session disconnected")  # fmt: skip
            found = scrape_until(port, lambda m: m.value("tm_producer_lease_expiries_total") == 1,
                                 what="the lease to run out")  # fmt: skip
            assert found.value("tm_producer_sessions", state="disconnected") == 0
            assert rpc(found, "OpenSession", "CANCELLED", REPORTING) == 1
    finally:
        server.stop()


# ---- the journal ---------------------------------------------------------------------------


def test_journal_commits_and_batches_after_durable_calls(tmp_path: Path) -> None:
    server = metered_server(data_dir=tmp_path / "data")
    try:
        with Producer(server.target, module="backup", session=False) as producer:
            for _ in range(3):
                producer.create_task("snapshot").finish()
        found = scrape(port_of(server))
        commits = found.value("tm_journal_commit_seconds_count")
        assert commits is not None and commits >= 3  # each durable reply waited for one
        assert (found.value("tm_journal_commit_seconds_sum") or 0) > 0
        assert (found.value("tm_journal_batch_records_sum") or 0) >= 6  # 3 creates, 3 finishes
        assert found.value("tm_journal_batch_records_count") == commits
        assert (found.value("tm_journal_written_bytes_total") or 0) > 0
        assert found.value("tm_journal_failing") == 0
    finally:
        server.stop()


def test_a_server_without_a_journal_has_no_journal_series(metered: ServerThread) -> None:
    found = scrape(port_of(metered))
    assert found.value("tm_journal_failing") is None
    assert found.value("tm_journal_commit_seconds_count") == 0


# ---- the endpoint --------------------------------------------------------------------------


def test_the_endpoint_speaks_enough_http(metered: ServerThread) -> None:
    port = port_of(metered)
    status, _, body = fetch(port, "/nope")
    assert status == 404
    status, headers, _ = fetch(port, "/metrics", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = fetch(port, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = fetch(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"tm_info{" in gzip.decompress(body)
    status, headers, body = fetch(port, "/metrics", {"Accept": "application/openmetrics-text"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    found = scrape(port)
    assert found.value("tm_info", version=found.labels("tm_info")[0]["version"],
                       node="node-a") == 1  # fmt: skip
    assert found.value("process_open_fds") is not None


def test_metrics_off_means_no_registry_and_no_endpoint() -> None:
    server = ServerThread().start()
    try:
        assert server.server is not None
        assert server.server.metrics is None and server.server.metrics_endpoint is None
        assert server.server.metrics_port == 0
    finally:
        server.stop()


def test_a_taken_metrics_address_fails_the_start(metered: ServerThread) -> None:
    taken = ServerThread(metrics_address=f"127.0.0.1:{port_of(metered)}")
    with pytest.raises(OSError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
        taken.start()
    taken.server = None  # it never started
    taken.stop()


async def test_an_applications_own_manager_counts_its_tasks() -> None:
    # An embedded server given the application's manager sets its observer.
    manager = TaskManager(shards=2, node="app", task_ttl=600)
    server = TmServer(
        ServerConfig(address="127.0.0.1:0", node="app", metrics_address="127.0.0.1:0"),
        manager=manager,
    )
    await server.start()
    try:
        await manager.register_module("app")
        impl = Controlled()
        handle = await manager.create_task("app", impl)
        await handle.start()
        impl.finish()
        await handle.wait()
        found = await asyncio.to_thread(scrape, server.metrics_port)
        assert found.value("tm_tasks_created_total", module="app", type="ctl") == 1
        done = {"module": "app", "type": "ctl", "outcome": "done"}
        assert found.value("tm_tasks_finished_total", **done) == 1
    finally:
        await server.stop()


# ---- the HTTP side -------------------------------------------------------------------------


def test_http_requests_are_counted_by_route_template_and_code() -> None:
    import requests

    server = metered_server(http_address="127.0.0.1:0")
    try:
        assert server.server is not None
        base = f"http://127.0.0.1:{server.server.http_port}"
        with Producer(server.target, module="backup") as producer:
            task = producer.create_task("snapshot")
            for _ in range(3):
                assert requests.get(f"{base}/task_manager/task_status/{task.id}", timeout=10).ok
        unknown = requests.get(f"{base}/task_manager/task_status/{uuid4()}", timeout=10)
        assert unknown.status_code == 400
        assert requests.get(f"{base}/no/such/path", timeout=10).status_code == 404
        found = scrape(port_of(server))
        route = "/task_manager/task_status/{task_id}"
        # The template, never the path: ids do not make series.
        assert found.value("tm_http_requests_total", route=route, method="GET", code="200") == 3
        assert found.value("tm_http_requests_total", route=route, method="GET", code="400") == 1
        assert (
            found.value("tm_http_requests_total", route="unmatched", method="GET", code="404") == 1
        )
        assert found.value("tm_http_request_duration_seconds_count", route=route, method="GET") == 4
        # The same registry is on the HTTP port too.
        same = requests.get(f"{base}/metrics", timeout=10)
        assert same.ok and "tm_http_requests_total" in same.text
    finally:
        server.stop()


def test_the_measured_store_times_every_call_of_the_store_port() -> None:
    # A store call the wrapper lacks fails only on a metered cluster node, at run time.
    from tm_server.cluster.store import ClusterStore
    from tm_server.metrics.cluster import MeasuredStore

    port = {name for name in vars(ClusterStore) if not name.startswith("_")}
    missing = {name for name in port if not hasattr(MeasuredStore, name)}
    assert not missing, f"MeasuredStore lacks {sorted(missing)}"
