"""ScyllaDB's REST API, driven as ScyllaDB's own ``test/rest_api/test_task_manager.py`` drives it.

The first tests make the same calls with the same expectations as that suite
(newest ScyllaDB: "does not exist" is 400, a non-abortable abort is 403, see
the reference, section 3); the rest cover the remainder of section 3 and the
JSON shapes of ``docs/http.md``. The helpers below play the part of
ScyllaDB's ``rest_util.py`` and ``task_manager_utils.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import pytest
import requests

from .conftest import (
    EPOCH,
    ISO_SECONDS,
    STATS_FIELDS,
    STATUS_FIELDS,
    RestApi,
    error_of,
    eventually,
    http_port,
    start_http_server,
)

#: The TTL ScyllaDB's suite sets around checks of finished tasks.
LONG_TIME = 1_000_000_000


# ---- the suite's helpers -----------------------------------------------------------------------


@contextmanager
def new_test_module(rest_api: RestApi) -> Iterator[None]:
    """Registers module "test"; afterwards deletes its tasks and unregisters it."""
    resp = rest_api.send("POST", "task_manager_test/test_module")
    resp.raise_for_status()
    try:
        yield
    finally:
        listed = rest_api.send("GET", "task_manager/list_module_tasks/test", {"internal": "true"})
        if listed.ok:  # a test may have unregistered the module itself
            for task in listed.json():
                rest_api.send("DELETE", "task_manager_test/test_task", {"task_id": task["task_id"]})
            rest_api.send("DELETE", "task_manager_test/test_module").raise_for_status()


@contextmanager
def new_test_task(rest_api: RestApi, args: dict[str, Any]) -> Iterator[str]:
    """A running test task made with ``args``; deleted (finished, unregistered) afterwards."""
    resp = rest_api.send("POST", "task_manager_test/test_task", args)
    resp.raise_for_status()
    task_id = resp.json()
    assert isinstance(task_id, str)
    UUID(task_id)
    try:
        yield task_id
    finally:
        rest_api.send("DELETE", "task_manager_test/test_task", {"task_id": task_id})


@contextmanager
def set_tmp_task_ttl(rest_api: RestApi, seconds: int) -> Iterator[int]:
    """task_ttl set to ``seconds`` for the block, then put back; yields the previous value."""
    resp = rest_api.send("POST", "task_manager/ttl", {"ttl": seconds})
    resp.raise_for_status()
    old_ttl = resp.json()
    assert isinstance(old_ttl, int)
    try:
        yield old_ttl
    finally:
        rest_api.send("POST", "task_manager/ttl", {"ttl": old_ttl}).raise_for_status()


def get_task_status(rest_api: RestApi, task_id: str) -> dict[str, Any]:
    status: dict[str, Any] = rest_api.json("GET", f"task_manager/task_status/{task_id}")
    return status


def list_tasks(rest_api: RestApi, module: str, **params: Any) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = rest_api.json(
        "GET", f"task_manager/list_module_tasks/{module}", params
    )
    return tasks


def wait_for_task(rest_api: RestApi, task_id: str, **params: Any) -> dict[str, Any]:
    status: dict[str, Any] = rest_api.json("GET", f"task_manager/wait_task/{task_id}", params)
    return status


def check_field(name: str, status: dict[str, Any], expected: dict[str, Any]) -> None:
    if name in expected:
        assert status[name] == expected[name], f"task's {name}: {status[name]!r}"


def check_status_correctness(status: dict[str, Any], expected: dict[str, Any]) -> None:
    """The fields ScyllaDB's suite checks: id, state, sequence number, keyspace, table, error."""
    for name in ("id", "state", "sequence_number", "keyspace", "table"):
        check_field(name, status, expected)
    if "error" in expected:
        assert expected["error"] in status["error"], status["error"]
    else:
        assert status["error"] == "", status["error"]


def assert_task_does_not_exist(rest_api: RestApi, task_id: str) -> None:
    resp = rest_api.send("GET", f"task_manager/task_status/{task_id}")
    body = error_of(resp, 400, "TASK_NOT_FOUND")
    assert body["message"] == f"task with id {task_id} not found"


def check_sequence_number(rest_api: RestApi, task_id: str, expected: int) -> None:
    check_field(
        "sequence_number", get_task_status(rest_api, task_id), {"sequence_number": expected}
    )


# ---- ScyllaDB's tests ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_task_manager_modules(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        modules = rest_api.json("GET", "task_manager/list_modules")
        assert "test" in modules, "test module was not listed"


@pytest.mark.timeout(30)
def test_task_manager_tasks(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        args0 = {"shard": 0, "keyspace": "keyspace0", "table": "table0"}
        with new_test_task(rest_api, args0) as task0:
            args1 = {"shard": 1, "keyspace": "keyspace0", "table": "table1"}
            with new_test_task(rest_api, args1) as task1:
                remaining = [task0, task1]
                for task in list_tasks(rest_api, "test"):
                    assert task["task_id"] in remaining, f"unknown task {task['task_id']}"
                    remaining.remove(task["task_id"])
                assert not remaining, f"list_module_tasks left out {remaining}"


@pytest.mark.timeout(30)
def test_task_manager_status_running(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        args0 = {"keyspace": "keyspace0", "table": "table0"}
        with new_test_task(rest_api, args0) as task0:
            status = get_task_status(rest_api, task0)
            check_status_correctness(status, {"id": task0, "state": "running",
                                              "sequence_number": 1, "keyspace": "keyspace0",
                                              "table": "table0"})  # fmt: skip
            assert list_tasks(rest_api, "test"), "task_status unregistered a running task"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, {"state": "done"}), ({"error": "Test task failed"},
                               {"state": "failed", "error": "Test task failed"})],
    ids=["done", "failed"],
)  # fmt: skip
def test_task_manager_status_finished(
    rest_api: RestApi, params: dict[str, str], expected: dict[str, str]
) -> None:
    with new_test_module(rest_api):
        args0 = {"keyspace": "keyspace0", "table": "table0"}
        with new_test_task(rest_api, args0) as task0:
            with set_tmp_task_ttl(rest_api, LONG_TIME):
                resp = rest_api.send("POST", f"task_manager_test/finish_test_task/{task0}", params)
                resp.raise_for_status()
                status = get_task_status(rest_api, task0)
                check_status_correctness(status, {"id": task0, "sequence_number": 1,
                                                  "keyspace": "keyspace0", "table": "table0",
                                                  **expected})  # fmt: skip
                # Newest ScyllaDB: a status query has no side effect.
                check_status_correctness(get_task_status(rest_api, task0), {**expected})
            # The TTL is read when the task finishes (reference 2.5): putting it back
            # does not shorten the stay of a task that already finished.
            check_status_correctness(get_task_status(rest_api, task0), {**expected})
        # Deleting it (the test API) unregisters it.
        assert_task_does_not_exist(rest_api, task0)


@pytest.mark.timeout(30)
def test_task_manager_not_abortable(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        args0 = {"keyspace": "keyspace0", "table": "table0"}
        with new_test_task(rest_api, args0) as task0:
            resp = rest_api.send("POST", f"task_manager/abort_task/{task0}")
            assert resp.status_code == requests.codes.forbidden, "aborted an unabortable task"
            body = error_of(resp, 403, "TASK_NOT_ABORTABLE")
            assert body["message"] == f"task with id {task0} cannot be aborted"
            # Refused, and untouched.
            status = get_task_status(rest_api, task0)
            assert status["state"] == "running" and status["abort_requested"] is False


@pytest.mark.timeout(30)
def test_task_manager_wait(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        keyspace, table = "keyspace0", "table0"
        with new_test_task(rest_api, {"keyspace": keyspace, "table": table}) as task0:
            got: list[dict[str, Any]] = []
            failures: list[BaseException] = []

            def wait() -> None:
                try:
                    got.append(wait_for_task(rest_api, task0))
                except BaseException as exc:
                    failures.append(exc)

            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            time.sleep(1)  # the waiter must wait until finish_test_task
            assert waiter.is_alive(), "wait_task returned while the task was running"
            assert not got and not failures
            resp = rest_api.send("POST", f"task_manager_test/finish_test_task/{task0}")
            resp.raise_for_status()
            waiter.join(10)
            assert not waiter.is_alive(), "wait_task did not return once the task finished"
            assert not failures, failures
            check_status_correctness(got[0], {"id": task0, "state": "done", "sequence_number": 1,
                                              "keyspace": keyspace, "table": table})  # fmt: skip
            # task_ttl is 0: the finished task goes at once (after a scheduling turn).
            eventually(
                lambda: (
                    rest_api.send("GET", f"task_manager/task_status/{task0}").status_code == 400
                ),
                what="the task to be unregistered",
            )
            assert_task_does_not_exist(rest_api, task0)


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_task_manager_ttl(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        args0 = {"keyspace": "keyspace0", "table": "table0"}
        args1 = {"keyspace": "keyspace0", "table": "table0", "shard": "1"}
        with new_test_task(rest_api, args0) as task0, new_test_task(rest_api, args1) as task1:
            ttl = 2
            with set_tmp_task_ttl(rest_api, ttl):
                for task in (task0, task1):
                    resp = rest_api.send("POST", f"task_manager_test/finish_test_task/{task}")
                    resp.raise_for_status()
                # Kept for the TTL...
                assert get_task_status(rest_api, task0)["state"] == "done"
                assert get_task_status(rest_api, task1)["shard"] == 1
                time.sleep(ttl + 1)
                # ...and gone after it, on both shards.
                assert_task_does_not_exist(rest_api, task0)
                assert_task_does_not_exist(rest_api, task1)


@pytest.mark.timeout(30)
def test_task_manager_sequence_number(rest_api: RestApi) -> None:
    with (
        new_test_module(rest_api),
        new_test_task(rest_api, {"shard": 0}) as task0,  # 1
        new_test_task(rest_api, {"shard": 0}) as task1,  # 2
        new_test_task(rest_api, {"shard": 0, "parent_id": task0}) as task2,  # 1
        new_test_task(rest_api, {"shard": 1, "parent_id": task1}) as task3,  # 2
        new_test_task(rest_api, {"shard": 1}) as task4,  # 1
    ):
        check_sequence_number(rest_api, task0, 1)
        check_sequence_number(rest_api, task1, 2)
        check_sequence_number(rest_api, task2, 1)
        check_sequence_number(rest_api, task3, 2)
        check_sequence_number(rest_api, task4, 1)


@pytest.mark.timeout(30)
def test_task_manager_recursive_status(rest_api: RestApi) -> None:
    with new_test_module(rest_api), new_test_task(rest_api, {"keyspace": "keyspace0"}) as task0:
        child_args = {"keyspace": "keyspace0", "parent_id": task0}
        with new_test_task(rest_api, child_args) as task1:  # child 1
            grandchild_args = {"keyspace": "keyspace0", "parent_id": task1}
            with new_test_task(rest_api, grandchild_args) as task2:  # child 1 of child 1
                with new_test_task(rest_api, child_args) as task3:  # child 2
                    pass  # deleted: finished, folded into task0
                tasks = rest_api.json("GET", f"task_manager/task_status_recursive/{task0}")
                # BFS, live children before folded ones.
                assert [t["id"] for t in tasks] == [task0, task1, task3, task2]
                states = [t["state"] for t in tasks]
                assert states == ["running", "running", "done", "running"]
                assert [t["parent_id"] for t in tasks] == ["none", task0, task0, task1]


@pytest.mark.timeout(30)
def test_module_not_exists(rest_api: RestApi) -> None:
    resp = rest_api.send("GET", "task_manager/list_module_tasks/module_that_does_not_exist")
    assert resp.status_code == requests.codes.bad_request
    body = error_of(resp, 400, "MODULE_NOT_FOUND")
    assert "module module_that_does_not_exist not found" in body["message"]


# ---- the rest of section 3 -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_list_module_tasks_filters(rest_api: RestApi) -> None:
    with (
        new_test_module(rest_api),
        new_test_task(rest_api, {"keyspace": "ks1", "table": "t1"}) as a,
        new_test_task(rest_api, {"keyspace": "ks1", "table": "t2", "shard": 1}) as b,
        new_test_task(rest_api, {"keyspace": "ks2", "table": "t1", "shard": 2}) as c,
        new_test_task(rest_api, {"parent_id": a, "keyspace": "ks1", "table": "t1"}) as child,
    ):

        def ids(**params: Any) -> set[str]:
            return {t["task_id"] for t in list_tasks(rest_api, "test", **params)}

        assert ids() == {a, b, c}  # the child is internal
        assert ids(internal="false") == {a, b, c}
        assert ids(internal="true") == {a, b, c, child}
        assert ids(keyspace="ks1") == {a, b}
        assert ids(keyspace="ks1", table="t1") == {a}
        assert ids(table="t1") == {a, c}
        assert ids(table="t1", internal="true") == {a, c, child}
        assert ids(keyspace="nope") == set()
        # Newest ScyllaDB: an empty value counts as not given.
        assert ids(keyspace="", table="") == {a, b, c}
        # Shard order: shard 0's tasks, then shard 1's, then shard 2's.
        shards = [t["shard"] for t in list_tasks(rest_api, "test")]
        assert shards == sorted(shards) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_unknown_and_malformed_ids_are_400(rest_api: RestApi) -> None:
    missing = str(uuid4())
    for method, path, params in [
        ("GET", f"task_manager/task_status/{missing}", None),
        ("POST", f"task_manager/abort_task/{missing}", None),
        ("GET", f"task_manager/wait_task/{missing}", None),
        ("GET", f"task_manager/task_status_recursive/{missing}", None),
        ("POST", f"task_manager_test/finish_test_task/{missing}", None),
        ("DELETE", "task_manager_test/test_task", {"task_id": missing}),
    ]:
        body = error_of(rest_api.send(method, path, params), 400, "TASK_NOT_FOUND")
        assert body["message"] == f"task with id {missing} not found", (path, body)
    for method, path, params in [
        ("GET", "task_manager/task_status/not-a-uuid", None),
        ("POST", "task_manager/abort_task/not-a-uuid", None),
        ("GET", "task_manager/wait_task/not-a-uuid", None),
        ("GET", "task_manager/task_status_recursive/not-a-uuid", None),
        ("POST", "task_manager_test/finish_test_task/not-a-uuid", None),
        ("DELETE", "task_manager_test/test_task", {"task_id": "not-a-uuid"}),
        ("POST", "task_manager_test/test_task", {"parent_id": "not-a-uuid"}),
        ("POST", "task_manager_test/test_task", {"task_id": "not-a-uuid"}),
    ]:
        body = error_of(rest_api.send(method, path, params), 400)
        assert body["reason"] == "INVALID_ARGUMENT", (path, params, body)
    # The server is fine afterwards.
    assert "test" in rest_api.json("GET", "task_manager/list_modules")


@pytest.mark.timeout(30)
def test_wait_task_timeout_is_408_and_the_task_goes_on(rest_api: RestApi) -> None:
    with new_test_module(rest_api), new_test_task(rest_api, {}) as task:
        started = time.monotonic()
        resp = rest_api.send("GET", f"task_manager/wait_task/{task}", {"timeout": 1})
        elapsed = time.monotonic() - started
        assert resp.status_code == requests.codes.request_timeout
        body = error_of(resp, 408, "WAIT_TIMEOUT")
        assert task in body["message"]
        assert 0.9 <= elapsed < 10, elapsed
        assert get_task_status(rest_api, task)["state"] == "running"
        with set_tmp_task_ttl(rest_api, LONG_TIME):
            rest_api.send("POST", f"task_manager_test/finish_test_task/{task}").raise_for_status()
            # A finished task: the wait answers at once, with its final status.
            status = wait_for_task(rest_api, task, timeout=5)
            assert status["id"] == task and status["state"] == "done"
            failed_id = rest_api.json("POST", "task_manager_test/test_task")
            rest_api.send(
                "POST", f"task_manager_test/finish_test_task/{failed_id}", {"error": "boom"}
            ).raise_for_status()
            # A failed task is no error for wait_task: 200 with state failed.
            failed = wait_for_task(rest_api, failed_id)
            assert failed["state"] == "failed" and "boom" in failed["error"]


@pytest.mark.timeout(30)
def test_ttl_and_user_ttl_get_and_set(rest_api: RestApi) -> None:
    assert rest_api.json("GET", "task_manager/ttl") == 0
    assert rest_api.json("POST", "task_manager/ttl", {"ttl": 30}) == 0
    assert rest_api.json("GET", "task_manager/ttl") == 30
    assert rest_api.json("POST", "task_manager/ttl", {"ttl": 0}) == 30
    assert rest_api.json("GET", "task_manager/user_ttl") == 3600
    assert rest_api.json("POST", "task_manager/user_ttl", {"user_ttl": 60}) == 3600
    assert rest_api.json("GET", "task_manager/user_ttl") == 60
    for path, name in (("task_manager/ttl", "ttl"), ("task_manager/user_ttl", "user_ttl")):
        for bad in ({name: -1}, {name: "abc"}, {name: "1.5"}, {name: ""}, {}):
            error_of(rest_api.send("POST", path, bad), 400)
    # Nothing changed by the refusals.
    assert rest_api.json("GET", "task_manager/ttl") == 0
    assert rest_api.json("GET", "task_manager/user_ttl") == 60


@pytest.mark.timeout(30)
def test_user_task_ttl_applies_to_user_tasks(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        rest_api.json("POST", "task_manager/user_ttl", {"user_ttl": LONG_TIME})
        with (
            new_test_task(rest_api, {"user_task": "true"}) as user,
            new_test_task(rest_api, {}) as plain,
        ):
            assert get_task_status(rest_api, user)["user_task"] is True
            assert get_task_status(rest_api, plain)["user_task"] is False
            for task in (user, plain):
                rest_api.send(
                    "POST", f"task_manager_test/finish_test_task/{task}"
                ).raise_for_status()
            # task_ttl 0: the plain one goes; user_ttl keeps the user task.
            eventually(
                lambda: (
                    rest_api.send("GET", f"task_manager/task_status/{plain}").status_code == 400
                ),
                what="the plain task to go",
            )
            assert get_task_status(rest_api, user)["state"] == "done"


@pytest.mark.timeout(30)
def test_drain_removes_finished_tasks_only(rest_api: RestApi) -> None:
    with new_test_module(rest_api), set_tmp_task_ttl(rest_api, LONG_TIME):
        finished = [rest_api.json("POST", "task_manager_test/test_task", {"shard": s})
                    for s in (0, 1, 2)]  # fmt: skip
        running = rest_api.json("POST", "task_manager_test/test_task", {"shard": 1})
        for task in finished:
            rest_api.send("POST", f"task_manager_test/finish_test_task/{task}").raise_for_status()
        assert {t["task_id"] for t in list_tasks(rest_api, "test")} == {*finished, running}
        resp = rest_api.send("POST", "task_manager/drain/test")
        assert resp.status_code == 200 and resp.content in (b"", b"null", b"{}"), resp.content
        for task in finished:
            assert_task_does_not_exist(rest_api, task)
        assert get_task_status(rest_api, running)["state"] == "running"
        assert [t["task_id"] for t in list_tasks(rest_api, "test")] == [running]
        body = error_of(rest_api.send("POST", "task_manager/drain/nope"), 400, "MODULE_NOT_FOUND")
        assert "module nope not found" in body["message"]


@pytest.mark.timeout(30)
def test_test_module_unregister_and_register(rest_api: RestApi) -> None:
    task = rest_api.json("POST", "task_manager_test/test_task")
    resp = rest_api.send("DELETE", "task_manager_test/test_module")
    assert resp.status_code == 200
    assert "test" not in rest_api.json("GET", "task_manager/list_modules")
    assert_task_does_not_exist(rest_api, task)
    error_of(rest_api.send("GET", "task_manager/list_module_tasks/test"), 400, "MODULE_NOT_FOUND")
    error_of(rest_api.send("POST", "task_manager_test/test_task"), 400, "MODULE_NOT_FOUND")
    resp = rest_api.send("POST", "task_manager_test/test_module")
    assert resp.status_code == 200
    assert "test" in rest_api.json("GET", "task_manager/list_modules")
    assert rest_api.json("GET", "task_manager/list_module_tasks/test") == []


@pytest.mark.timeout(30)
def test_test_task_options(rest_api: RestApi) -> None:
    chosen = str(uuid4())
    made = rest_api.json(
        "POST",
        "task_manager_test/test_task",
        {"task_id": chosen, "shard": 2, "keyspace": "k", "table": "t", "entity": "e"},
    )
    assert made == chosen
    status = get_task_status(rest_api, chosen)
    assert (status["shard"], status["keyspace"], status["table"], status["entity"]) == (
        2, "k", "t", "e",
    )  # fmt: skip
    # The same id twice, a shard the server does not have, a parent that does not exist.
    again = rest_api.send("POST", "task_manager_test/test_task", {"task_id": chosen})
    assert again.status_code in (400, 409), again.text
    error_of(rest_api.send("POST", "task_manager_test/test_task", {"shard": 3}), 400)
    error_of(rest_api.send("POST", "task_manager_test/test_task", {"shard": "x"}), 400)
    error_of(
        rest_api.send("POST", "task_manager_test/test_task", {"parent_id": str(uuid4())}),
        400,
        "TASK_NOT_FOUND",
    )
    # DELETE finishes a running task successfully, then unregisters it.
    resp = rest_api.send("DELETE", "task_manager_test/test_task", {"task_id": chosen})
    assert resp.status_code == 200
    assert_task_does_not_exist(rest_api, chosen)
    error_of(rest_api.send("DELETE", "task_manager_test/test_task"), 400)


# ---- JSON shapes -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_task_status_json_shape(rest_api: RestApi) -> None:
    with new_test_module(rest_api), set_tmp_task_ttl(rest_api, 600):
        root = rest_api.json(
            "POST", "task_manager_test/test_task", {"shard": 1, "keyspace": "ks", "table": "t"}
        )
        child = rest_api.json(
            "POST", "task_manager_test/test_task", {"parent_id": root, "shard": 2}
        )
        resp = rest_api.send("GET", f"task_manager/task_status/{root}")
        assert resp.headers["Content-Type"].startswith("application/json")
        status = resp.json()
        assert list(status) == STATUS_FIELDS
        assert status["id"] == root
        assert (status["type"], status["kind"], status["scope"], status["state"]) == (
            "test", "node", "test", "running",
        )  # fmt: skip
        assert status["is_abortable"] is False and status["error"] == ""
        assert status["parent_id"] == "none"
        assert (status["sequence_number"], status["shard"]) == (1, 1)
        assert (status["keyspace"], status["table"], status["entity"]) == ("ks", "t", "")
        assert status["progress_units"] == ""
        assert status["progress_total"] == 0.0 and status["progress_completed"] == 0.0
        assert isinstance(status["progress_total"], float)
        assert status["children_ids"] == [{"task_id": child, "node": "node-a"}]
        assert ISO_SECONDS.match(status["creation_time"]) and ISO_SECONDS.match(
            status["start_time"]
        )
        assert status["start_time"] != EPOCH
        assert status["end_time"] == EPOCH  # unset: the epoch, not null
        assert status["creation_time"] <= status["start_time"]
        assert (status["module"], status["internal"], status["user_task"]) == ("test", False, False)
        assert status["abort_requested"] is False and status["node"] == "node-a"
        assert status["children_count"] == 1
        assert status["expire_time"] is None and status["abort"] is None
        assert status["owner"] == "" and status["unreachable_nodes"] == []
        # A parent's rolled-up progress counts as read: a time, or none yet.
        assert status["last_progress_time"] is None or ISO_SECONDS.match(
            status["last_progress_time"]
        )
        assert status["progress_rate"] is None and status["estimated_end_time"] is None

        child_status = get_task_status(rest_api, child)
        assert list(child_status) == STATUS_FIELDS
        assert child_status["parent_id"] == root and child_status["internal"] is True
        assert child_status["sequence_number"] == 1 and child_status["shard"] == 2
        assert child_status["children_ids"] == [] and child_status["children_count"] == 0
        # No progress reported: no progress time, rate or estimate.
        assert child_status["last_progress_time"] is None
        assert child_status["progress_rate"] is None
        assert child_status["estimated_end_time"] is None

        rest_api.send("POST", f"task_manager_test/finish_test_task/{child}").raise_for_status()
        rest_api.send(
            "POST", f"task_manager_test/finish_test_task/{root}", {"error": "it broke"}
        ).raise_for_status()
        done = get_task_status(rest_api, root)
        assert list(done) == STATUS_FIELDS
        assert done["state"] == "failed" and "it broke" in done["error"]
        assert ISO_SECONDS.match(done["end_time"]) and done["end_time"] != EPOCH
        assert done["start_time"] <= done["end_time"]
        # A finished root with a TTL says when it goes.
        assert isinstance(done["expire_time"], str) and ISO_SECONDS.match(done["expire_time"])
        assert done["expire_time"] > done["end_time"]
        # A finished child folded into its parent is still listed as its child.
        assert done["children_ids"] == [{"task_id": child, "node": "node-a"}]


@pytest.mark.timeout(30)
def test_task_stats_and_recursive_json_shapes(rest_api: RestApi) -> None:
    with new_test_module(rest_api):
        root = rest_api.json("POST", "task_manager_test/test_task", {"keyspace": "ks", "table": "t",
                                                                     "entity": "e"})  # fmt: skip
        child = rest_api.json("POST", "task_manager_test/test_task", {"parent_id": root})
        (entry,) = list_tasks(rest_api, "test")
        assert list(entry) == STATS_FIELDS
        assert entry["task_id"] == root
        assert (entry["state"], entry["type"], entry["kind"], entry["scope"]) == (
            "running", "test", "node", "test",
        )  # fmt: skip
        assert (entry["keyspace"], entry["table"], entry["entity"]) == ("ks", "t", "e")
        assert (entry["sequence_number"], entry["shard"]) == (1, 0)
        assert ISO_SECONDS.match(entry["creation_time"]) and ISO_SECONDS.match(entry["start_time"])
        assert entry["end_time"] == EPOCH
        assert entry["progress_completed"] == 0.0 and entry["progress_total"] == 0.0
        assert (entry["module"], entry["internal"]) == ("test", False)
        listed = list_tasks(rest_api, "test", internal="true")
        assert {e["task_id"]: e["internal"] for e in listed} == {root: False, child: True}
        tree = rest_api.json("GET", f"task_manager/task_status_recursive/{root}")
        assert [list(s) for s in tree] == [STATUS_FIELDS, STATUS_FIELDS]
        assert [s["id"] for s in tree] == [root, child]
        assert tree[0] == get_task_status(rest_api, root)


@pytest.mark.timeout(30)
def test_answers_of_the_calls_that_return_nothing(rest_api: RestApi) -> None:
    # list_modules: a JSON array of names; test_task: the id as a JSON string.
    resp = rest_api.send("GET", "task_manager/list_modules")
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == ["test"]
    resp = rest_api.send("POST", "task_manager_test/test_task")
    assert resp.text.startswith('"') and isinstance(resp.json(), str)
    task = resp.json()
    for method, path, params in [
        ("POST", "task_manager_test/test_module", None),
        ("POST", f"task_manager_test/finish_test_task/{task}", None),
        ("POST", "task_manager/drain/test", None),
    ]:
        resp = rest_api.send(method, path, params)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.content in (b"", b"null", b"{}"), (path, resp.content)


@pytest.mark.timeout(30)
def test_errors_are_json_with_message_code_and_reason(rest_api: RestApi) -> None:
    missing = str(uuid4())
    body = error_of(rest_api.send("GET", f"task_manager/task_status/{missing}"), 400)
    assert body == {"message": f"task with id {missing} not found", "code": 400,
                    "reason": "TASK_NOT_FOUND", **({"metadata": body["metadata"]}
                                                   if "metadata" in body else {})}  # fmt: skip
    body = error_of(rest_api.send("GET", "task_manager/list_module_tasks/nope"), 400)
    assert body["reason"] == "MODULE_NOT_FOUND" and "module nope not found" in body["message"]
    body = error_of(rest_api.send("POST", "task_manager/ttl", {"ttl": -5}), 400)
    assert body["reason"] == "INVALID_ARGUMENT" and "ttl" in body["message"]


@pytest.mark.timeout(30)
def test_a_server_without_the_test_service_has_no_test_api() -> None:
    thread = start_http_server(enable_test_service=False)
    try:
        api = RestApi(http_port(thread))
        assert api.json("GET", "task_manager/list_modules") == []
        resp = api.send("POST", "task_manager_test/test_task")
        assert resp.status_code == 404, resp.text
        error_of(resp, 404)
    finally:
        thread.stop()
