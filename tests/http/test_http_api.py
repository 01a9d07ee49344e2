"""tm's own HTTP endpoints and extras: paging, state and type filters, nodes, whoami, children,
abort reasons, unknown paths and methods, bad input, and /metrics on the HTTP port."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
import requests

from ..process import ServerProcess
from ..scrape import Scrape
from ..server_fixture import ServerThread
from .conftest import (
    ISO_SECONDS,
    Reporter,
    RestApi,
    error_of,
    eventually,
    finish,
    http_port,
    make_task,
    start_http_server,
)

pytestmark = pytest.mark.timeout(30)


def walk_pages(api: RestApi, module: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following ``X-TM-Next-Page-Token``."""
    pages: list[list[dict[str, Any]]] = []
    token: str | None = None
    for _ in range(1000):
        query = dict(params) if token is None else {**params, "page_token": token}
        resp = api.send("GET", f"task_manager/list_module_tasks/{module}", query)
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
        token = resp.headers.get("X-TM-Next-Page-Token")
        if token is None:
            return pages
        assert token, "an empty next-page token: absent is how the last page says so"
    raise AssertionError("the pages never ended")


# ---- paging and filters --------------------------------------------------------------------


def test_paging_walks_every_task_exactly_once(rest_api: RestApi) -> None:
    tasks = {make_task(rest_api, shard=i % 3, keyspace=f"ks{i % 2}") for i in range(25)}
    pages = walk_pages(rest_api, "test", page_size=4)
    assert len(pages) >= 7
    assert all(1 <= len(page) <= 4 for page in pages), [len(p) for p in pages]
    seen = [entry["task_id"] for page in pages for entry in page]
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == tasks
    # The pages in order are the listing in order (shard order, as ScyllaDB lists).
    assert [e["shard"] for p in pages for e in p] == sorted(e["shard"] for p in pages for e in p)
    # Without page_size: one answer, no token.
    whole = rest_api.send("GET", "task_manager/list_module_tasks/test")
    assert "X-TM-Next-Page-Token" not in whole.headers
    assert {e["task_id"] for e in whole.json()} == tasks
    # Paging keeps the filters.
    ks1 = walk_pages(rest_api, "test", page_size=3, keyspace="ks1")
    assert sorted(e["task_id"] for p in ks1 for e in p) == sorted(
        e["task_id"] for e in whole.json() if e["keyspace"] == "ks1"
    )


def test_paging_refuses_bad_tokens_and_sizes(rest_api: RestApi) -> None:
    make_task(rest_api)
    make_task(rest_api)
    first = rest_api.send("GET", "task_manager/list_module_tasks/test", {"page_size": 1})
    token = first.headers["X-TM-Next-Page-Token"]
    error_of(
        rest_api.send("GET", "task_manager/list_module_tasks/test", {"page_token": "garbage"}),
        400,
        "INVALID_PAGE_TOKEN",
    )
    # A token of one listing is not one of another (other filters).
    resp = rest_api.send(
        "GET", "task_manager/list_module_tasks/test", {"page_token": token, "keyspace": "other"}
    )
    error_of(resp, 400, "INVALID_PAGE_TOKEN")
    for size in ("abc", "-1", "5000", "1.5"):
        resp = rest_api.send("GET", "task_manager/list_module_tasks/test", {"page_size": size})
        error_of(resp, 400)


def test_state_filter_takes_a_list_or_repeats(rest_api: RestApi) -> None:
    rest_api.json("POST", "task_manager/ttl", {"ttl": 600})
    running = make_task(rest_api)
    done = make_task(rest_api, shard=1)
    failed = make_task(rest_api, shard=2)
    finish(rest_api, done)
    finish(rest_api, failed, "broken")

    def ids(params: Any) -> set[str]:
        listed = rest_api.json("GET", "task_manager/list_module_tasks/test", params)
        return {e["task_id"] for e in listed}

    assert ids({"state": "running"}) == {running}
    assert ids({"state": "done"}) == {done}
    assert ids({"state": "done,failed"}) == {done, failed}
    assert ids([("state", "done"), ("state", "failed")]) == {done, failed}
    assert ids([("state", "running"), ("state", "failed")]) == {running, failed}
    assert ids({"state": "created"}) == set()
    assert ids({}) == {running, done, failed}
    assert ids({"state": ""}) == {running, done, failed}
    body = error_of(
        rest_api.send("GET", "task_manager/list_module_tasks/test", {"state": "sleeping"}), 400
    )
    assert "sleeping" in body["message"] or "state" in body["message"]


def test_type_filter(rest_api: RestApi, reporter: Reporter) -> None:
    reporter.register("backup")
    dumps = {reporter.create("backup", "dump") for _ in range(2)}
    verify = reporter.create("backup", "verify")

    def ids(params: Any) -> set[str]:
        listed = rest_api.json("GET", "task_manager/list_module_tasks/backup", params)
        return {e["task_id"] for e in listed}

    assert ids({}) == {*dumps, verify}
    assert ids({"type": "dump"}) == dumps
    assert ids({"type": "verify"}) == {verify}
    assert ids({"type": "nothing"}) == set()
    assert ids({"type": "dump", "state": "done"}) == set()
    listed = rest_api.json("GET", "task_manager/list_module_tasks/backup", {"type": "verify"})
    assert [e["type"] for e in listed] == ["verify"]


# ---- tm's endpoints ------------------------------------------------------------------------


def test_nodes_lists_this_node(rest_api: RestApi) -> None:
    nodes = rest_api.json("GET", "tm/v1/nodes")
    assert isinstance(nodes, list) and len(nodes) == 1
    (node,) = nodes
    assert list(node) == ["name", "address", "version", "started_at", "heartbeat_at", "alive",
                          "left"]  # fmt: skip
    assert node["name"] == "node-a"
    assert node["alive"] is True and node["left"] is False
    assert isinstance(node["version"], str) and node["version"]
    assert isinstance(node["address"], str) and node["address"]
    assert ISO_SECONDS.match(node["started_at"]) and ISO_SECONDS.match(node["heartbeat_at"])


def test_whoami_without_caller_checks_can_do_everything(rest_api: RestApi) -> None:
    me = rest_api.json("GET", "tm/v1/whoami")
    assert list(me)[:4] == ["principal", "checks_callers", "grants", "can"]
    assert me["checks_callers"] is False
    assert me["principal"] == ""
    assert me["can"] == {"read": True, "abort": True, "set_ttl": True}


def test_children_pages(rest_api: RestApi) -> None:
    root = make_task(rest_api)
    children = {make_task(rest_api, parent_id=root, shard=i % 3) for i in range(5)}
    seen: list[dict[str, Any]] = []
    token = ""
    for _ in range(10):
        params: dict[str, Any] = {"page_size": 2}
        if token:
            params["page_token"] = token
        page = rest_api.json("GET", f"tm/v1/children/{root}", params)
        assert list(page) == ["children", "count", "next_page_token"]
        assert page["count"] == 5 and len(page["children"]) <= 2
        seen.extend(page["children"])
        token = page["next_page_token"]
        if not token:
            break
    assert len(seen) == 5
    assert {c["task_id"] for c in seen} == children
    assert all(list(c) == ["task_id", "node"] and c["node"] == "node-a" for c in seen)
    whole = rest_api.json("GET", f"tm/v1/children/{root}")
    assert whole["count"] == 5 and whole["next_page_token"] == ""
    assert {c["task_id"] for c in whole["children"]} == children
    missing = str(uuid4())
    body = error_of(rest_api.send("GET", f"tm/v1/children/{missing}"), 400, "TASK_NOT_FOUND")
    assert body["message"] == f"task with id {missing} not found"
    error_of(rest_api.send("GET", "tm/v1/children/nope"), 400, "INVALID_ARGUMENT")
    error_of(
        rest_api.send("GET", f"tm/v1/children/{root}", {"page_token": "garbage"}),
        400,
        "INVALID_PAGE_TOKEN",
    )


def test_abort_with_a_reason_shows_in_the_status(rest_api: RestApi, reporter: Reporter) -> None:
    reporter.register("backup")
    root = reporter.create("backup", "dump", abortable=True)
    child = reporter.create("backup", "part", parent_id=root)
    resp = rest_api.send("POST", f"task_manager/abort_task/{root}", {"reason": "disk replaced"})
    assert resp.status_code == 200 and resp.content in (b"", b"null", b"{}"), resp.content
    status = rest_api.json("GET", f"task_manager/task_status/{root}")
    assert status["abort_requested"] is True
    abort = status["abort"]
    assert list(abort) == ["request_time", "reason", "principal", "origin_task_id"]
    assert abort["reason"] == "disk replaced" and abort["principal"] == ""
    assert abort["origin_task_id"] in ("", None)
    assert ISO_SECONDS.match(abort["request_time"])

    def child_abort() -> Any:
        found = rest_api.json("GET", f"task_manager/task_status/{child}")["abort"]
        return found if found and found.get("origin_task_id") == root else None

    found = eventually(child_abort, what="the child's abort")
    assert found["reason"] == "disk replaced"
    # Not abortable: 403; the first abort stays as it was.
    plain = make_task(rest_api)
    error_of(rest_api.send("POST", f"task_manager/abort_task/{plain}"), 403, "TASK_NOT_ABORTABLE")


# ---- paths, methods, bad input ---------------------------------------------------------------


def test_unknown_paths_are_404_json(rest_api: RestApi) -> None:
    for path in ("nope", "task_manager/nope", "tm/v1/nope", "task_manager/task_status",
                 "task_manager/task_status/a/b"):  # fmt: skip
        body = error_of(rest_api.send("GET", path), 404)
        assert body["message"], path


def test_wrong_methods_are_405_json(rest_api: RestApi) -> None:
    task = make_task(rest_api)
    for method, path in [
        ("GET", f"task_manager/abort_task/{task}"),
        ("POST", f"task_manager/task_status/{task}"),
        ("DELETE", "task_manager/ttl"),
        ("PUT", "task_manager/list_modules"),
        ("GET", "task_manager/drain/test"),
        ("GET", "task_manager_test/test_task"),
        ("GET", "tm/v1/login"),
    ]:
        resp = rest_api.send(method, path)
        error_of(resp, 405)
        assert resp.headers.get("Allow"), (method, path)
    # Refused without effect: the task still runs.
    assert rest_api.json("GET", f"task_manager/task_status/{task}")["state"] == "running"


def test_bad_query_values_are_400_json_never_500(rest_api: RestApi) -> None:
    task = make_task(rest_api)
    for method, path, params in [
        ("POST", "task_manager/ttl", {"ttl": "abc"}),
        ("POST", "task_manager/ttl", {"ttl": "99999999999999999999999"}),
        ("POST", "task_manager/user_ttl", {"user_ttl": "1e3"}),
        ("GET", f"task_manager/wait_task/{task}", {"timeout": "abc"}),
        ("GET", f"task_manager/wait_task/{task}", {"timeout": "-1"}),
        ("GET", "task_manager/list_module_tasks/test", {"page_size": "many"}),
        ("GET", "task_manager/list_module_tasks/test", {"internal": "maybe"}),
        ("GET", "task_manager/list_module_tasks/test", {"keyspace": "k" * 5000}),
        ("POST", "task_manager_test/test_task", {"user_task": "maybe"}),
        ("POST", "task_manager_test/test_task", {"shard": "-1"}),
        ("GET", f"tm/v1/children/{task}", {"page_size": "x"}),
        ("GET", "tm/v1/watch", {"module": "test", "snapshot": "maybe"}),
        ("GET", "tm/v1/watch", {"module": "test", "cursor": "garbage"}),
        ("GET", f"tm/v1/wait/{task}", {"timeout": "soon"}),
        ("GET", f"task_manager/task_status/{'x' * 3000}", None),
    ]:
        resp = rest_api.send(method, path, params)
        assert resp.status_code == 400, (method, path, params, resp.status_code, resp.text)
        error_of(resp, 400)
    # Booleans ScyllaDB takes: true/false (any case) and 1/0 parse.
    for value in ("true", "True", "1", "false", "0"):
        resp = rest_api.send("GET", "task_manager/list_module_tasks/test", {"internal": value})
        assert resp.status_code == 200, (value, resp.text)
    assert rest_api.json("GET", "task_manager/ttl") == 0
    assert rest_api.json("GET", f"task_manager/task_status/{task}")["state"] == "running"


def test_large_and_garbage_bodies_are_refused_and_the_server_goes_on(rest_api: RestApi) -> None:
    # Garbage where a body is read (the login form).
    for body, content_type in [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"%zz=%%%", "application/x-www-form-urlencoded"),
    ]:
        resp = rest_api.send(
            "POST", "tm/v1/login", data=body, headers={"Content-Type": content_type}
        )
        assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text)
        error_of(resp, resp.status_code)
    # A body far past any request's size, on a call that takes none.
    big = b"x" * (8 * 1024 * 1024)
    try:
        resp = rest_api.send("POST", "task_manager/ttl", {"ttl": 77}, data=big)
    except requests.ConnectionError:
        pass  # refused before the whole body went: also a refusal
    else:
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:200])
        assert resp.status_code == 413, resp.status_code
    assert rest_api.json("GET", "task_manager/ttl") == 0, "the oversized call took effect"
    # Headers past any sensible size.
    try:
        resp = rest_api.send("GET", "task_manager/list_modules", headers={"X-Big": "y" * 100_000})
    except requests.ConnectionError:
        pass
    else:
        assert 400 <= resp.status_code < 500, resp.status_code
    # Everyone else is still served.
    assert rest_api.json("GET", "task_manager/list_modules") == ["test"]
    task = make_task(rest_api)
    assert rest_api.json("GET", f"task_manager/task_status/{task}")["state"] == "running"


# ---- metrics, dashboard, a real process -----------------------------------------------------


def test_metrics_on_the_http_port_are_the_servers_registry() -> None:
    thread = start_http_server(metrics_address="127.0.0.1:0")
    try:
        api = RestApi(http_port(thread))
        make_task(api)
        make_task(api)
        resp = api.send("GET", "metrics")
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        found = Scrape(resp.text)
        assert found.value("tm_tasks_created_total", module="test", type="test") == 2
        assert thread.server is not None
        other = requests.get(f"http://127.0.0.1:{thread.server.metrics_port}/metrics", timeout=10)
        assert Scrape(other.text).value(
            "tm_tasks_created_total", module="test", type="test"
        ) == found.value("tm_tasks_created_total", module="test", type="test")
    finally:
        thread.stop()


def test_no_metrics_without_metrics_address(rest_api: RestApi) -> None:
    error_of(rest_api.send("GET", "metrics"), 404)


def test_the_dashboard_is_served_at_the_root(rest_api: RestApi) -> None:
    resp = rest_api.send("GET", "")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")


def test_the_http_side_shares_the_grpc_sides_registry(
    server: ServerThread, rest_api: RestApi, reporter: Reporter
) -> None:
    reporter.register("backup")
    task = reporter.create("backup", "dump", progress_units="files", progress_total=10)
    reporter.progress(task, 4)
    status = rest_api.json("GET", f"task_manager/task_status/{task}")
    assert (status["module"], status["type"], status["progress_units"]) == ("backup", "dump",
                                                                             "files")  # fmt: skip
    assert (status["progress_completed"], status["progress_total"]) == (4.0, 10.0)
    assert sorted(rest_api.json("GET", "task_manager/list_modules")) == ["backup", "test"]


@pytest.mark.slow
def test_a_tm_server_process_serves_http() -> None:
    proc = ServerProcess("--enable-test-service", "--journal", "off", "--store", "none")
    try:
        port = proc.http_port
        assert port
        api = RestApi(port)
        assert api.json("GET", "task_manager/list_modules") == ["test"]
        task = make_task(api, keyspace="ks")
        assert api.json("GET", f"task_manager/task_status/{task}")["keyspace"] == "ks"
    finally:
        proc.kill()
