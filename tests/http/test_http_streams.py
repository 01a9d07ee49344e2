"""Server-Sent Events: ``/tm/v1/watch`` (snapshot, live events, resuming) and ``/tm/v1/wait``.

Streams are read with ``requests`` (``stream=True``) and parsed line by line
(``event:``, ``id:``, ``data:``), as a browser's ``EventSource`` would.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from uuid import uuid4

import pytest

from .conftest import (
    STATS_FIELDS,
    STATUS_FIELDS,
    Reporter,
    RestApi,
    SseEvent,
    SseStream,
    batch_events,
    error_of,
    finish,
    http_port,
    make_task,
    start_http_server,
)

pytestmark = pytest.mark.timeout(30)


def watch(api: RestApi, headers: dict[str, str] | None = None, **params: Any) -> SseStream:
    return SseStream.open(api, "tm/v1/watch", params, headers=headers)


def until_task(
    stream: SseStream, task_id: str, type: str | None = None, **task: Any
) -> list[dict[str, Any]]:
    """Reads batches until an event of ``task_id`` (of ``type``, its entry matching ``task``)."""

    def matches(event: dict[str, Any]) -> bool:
        entry = event["task"]
        return (
            entry["task_id"] == task_id
            and (type is None or event["type"] == type)
            and all(entry.get(k) == v for k, v in task.items())
        )

    read = stream.until(lambda e: e.event == "batch" and any(matches(x) for x in e.data["events"]))
    return batch_events(read)


def until_seen(stream: SseStream, task_ids: set[str]) -> None:
    """Reads until every one of ``task_ids`` was in an event of the stream."""

    def seen() -> set[str]:
        return {e["task"]["task_id"] for e in batch_events(stream.events)}

    while not task_ids <= seen():
        assert stream.next() is not None, "the stream ended"


def is_batch_with_cursor(event: SseEvent) -> bool:
    return event.event == "batch" and bool(event.data["cursor"])


# ---- watch --------------------------------------------------------------------------------


def test_snapshot_then_snapshot_complete(rest_api: RestApi) -> None:
    roots = {make_task(rest_api, shard=s, keyspace="ks") for s in (0, 1, 2)}
    child = make_task(rest_api, parent_id=next(iter(roots)))
    with watch(rest_api, module="test", snapshot="true") as stream:
        read = stream.until(lambda e: e.event == "batch" and e.data["snapshot_complete"])
        assert all(e.event == "batch" for e in read)
        *snapshot, complete = read
        # Snapshot batches carry no id; the one that completes it carries its cursor.
        assert all(e.id is None and e.data["snapshot_complete"] is False for e in snapshot)
        assert complete.data["cursor"] and complete.id == complete.data["cursor"]
        events = batch_events(read)
        assert [e["type"] for e in events] == ["existing"] * 3
        assert {e["task"]["task_id"] for e in events} == roots
        assert all(list(e["task"]) == STATS_FIELDS for e in events)
        assert all(e["status"] is None for e in events)  # no full_status
    # internal=true shows the child; full_status=true a whole status per event.
    with watch(
        rest_api, module="test", snapshot="true", internal="true", full_status="true"
    ) as stream:
        events = batch_events(
            stream.until(lambda e: e.event == "batch" and e.data["snapshot_complete"])
        )
        assert {e["task"]["task_id"] for e in events} == roots | {child}
        assert all(list(e["status"]) == STATUS_FIELDS for e in events)
        assert all(e["status"]["id"] == e["task"]["task_id"] for e in events)
    # The filters of the listing apply: keyspace, state.
    with watch(rest_api, module="test", snapshot="true", keyspace="other") as stream:
        events = batch_events(
            stream.until(lambda e: e.event == "batch" and e.data["snapshot_complete"])
        )
        assert events == []


def test_created_changed_finished_as_they_happen(rest_api: RestApi, reporter: Reporter) -> None:
    rest_api.json("POST", "task_manager/ttl", {"ttl": 600})
    reporter.register("backup")
    with watch(rest_api, module="backup") as stream:
        # Without a snapshot or cursor: first an empty batch with the cursor of now.
        first = stream.until(lambda e: e.event == "batch")[-1]
        assert first.data["events"] == [] and first.id and first.id == first.data["cursor"]
        task = reporter.create("backup", "dump", start=False, progress_units="files",
                               progress_total=10)  # fmt: skip
        created = until_task(stream, task, "created")
        entry = next(e["task"] for e in created if e["task"]["task_id"] == task)
        assert entry["state"] == "created" and entry["type"] == "dump"
        assert entry["module"] == "backup"
        reporter.start(task)
        until_task(stream, task, "changed", state="running")
        reporter.progress(task, 3)
        until_task(stream, task, "changed", progress_completed=3.0, progress_total=10.0)
        reporter.finish(task, "disk full")
        events = until_task(stream, task, "finished")
        final = next(e["task"] for e in events if e["type"] == "finished")
        assert final["state"] == "failed" and final["end_time"] != "1970-01-01T00:00:00Z"
        # Every batch with events carries an id, the cursor to resume after it.
        assert all(e.id == e.data["cursor"] for e in stream.events if e.event == "batch")
        # Other modules' tasks are not this watch's.
        other = make_task(rest_api)
        marker = reporter.create("backup", "marker")
        events = until_task(stream, marker)
        assert other not in {e["task"]["task_id"] for e in events}


def test_removed_when_drained(rest_api: RestApi) -> None:
    rest_api.json("POST", "task_manager/ttl", {"ttl": 600})
    task = make_task(rest_api)
    finish(rest_api, task)
    with watch(rest_api, module="test") as stream:
        stream.until(is_batch_with_cursor)
        assert rest_api.send("POST", "task_manager/drain/test").status_code == 200
        events = until_task(stream, task, "removed")
        removed = next(e for e in events if e["type"] == "removed")
        assert removed["task"]["state"] == "done"


def test_resume_with_last_event_id_gives_exactly_what_changed(rest_api: RestApi) -> None:
    rest_api.json("POST", "task_manager/ttl", {"ttl": 600})
    with watch(rest_api, module="test") as stream:
        stream.until(is_batch_with_cursor)
        a = make_task(rest_api)
        b = make_task(rest_api, shard=1)
        before = make_task(rest_api, shard=2)  # everything before it was read before it
        until_task(stream, before, state="running")
        last_id = [e.id for e in stream.events if e.id][-1]
    # While no one watches: a finishes, c appears; b does not change.
    finish(rest_api, a)
    c = make_task(rest_api, shard=1)
    with watch(rest_api, module="test", headers={"Last-Event-ID": last_id}) as stream:
        sentinel_seen = False
        read: list[dict[str, Any]] = []
        sentinel = ""
        for _ in range(50):
            event = stream.next()
            assert event is not None
            if event.event != "batch":
                continue
            read.extend(event.data["events"])
            ids = {e["task"]["task_id"] for e in read}
            if not sentinel and {a, c} <= ids:
                sentinel = make_task(rest_api)
            if sentinel and sentinel in ids:
                sentinel_seen = True
                break
        assert sentinel_seen
    counts = Counter(e["task"]["task_id"] for e in read if e["task"]["task_id"] != sentinel)
    assert counts == {a: 1, c: 1}, counts  # b, before: untouched since the cursor
    final_a = next(e for e in read if e["task"]["task_id"] == a)
    assert final_a["type"] == "finished" and final_a["task"]["state"] == "done"
    # The cursor as a query parameter does the same: now with the sentinel too.
    with watch(rest_api, module="test", cursor=last_id) as stream:
        read = []
        while not {a, c, sentinel} <= {e["task"]["task_id"] for e in read}:
            event = stream.next()
            assert event is not None
            if event.event == "batch":
                read.extend(event.data["events"])
        marker = make_task(rest_api)
        read.extend(until_task(stream, marker))
    counts = Counter(e["task"]["task_id"] for e in read if e["task"]["task_id"] != marker)
    assert counts == {a: 1, c: 1, sentinel: 1}, counts
    assert b not in counts and before not in counts


def test_a_bad_cursor_is_400_json_before_the_stream(rest_api: RestApi) -> None:
    for headers, params in [
        ({"Last-Event-ID": "garbage"}, {"module": "test"}),
        ({}, {"module": "test", "cursor": "garbage"}),
        ({}, {"module": "test", "cursor": "w1.AAAA"}),
    ]:
        resp = rest_api.send("GET", "tm/v1/watch", params, headers=headers, timeout=10)
        error_of(resp, 400)
        assert not resp.headers["Content-Type"].startswith("text/event-stream")
    # A cursor of another server (or from before a restart) has expired: 409, still before.
    other = start_http_server()
    try:
        with watch(RestApi(http_port(other)), module="test") as stream:
            foreign = stream.until(is_batch_with_cursor)[-1].data["cursor"]
    finally:
        other.stop()
    for headers, params in [
        ({"Last-Event-ID": foreign}, {"module": "test"}),
        ({}, {"module": "test", "cursor": foreign}),
    ]:
        resp = rest_api.send("GET", "tm/v1/watch", params, headers=headers, timeout=10)
        error_of(resp, 409, "CURSOR_EXPIRED")
    assert rest_api.json("GET", "task_manager/list_modules") == ["test"]


def test_an_event_source_reconnect_resumes_instead_of_snapshotting(rest_api: RestApi) -> None:
    # EventSource reconnects to the same URL (snapshot=true) with Last-Event-ID:
    # it resumes after its last event, with no snapshot again.
    old = make_task(rest_api)
    with watch(rest_api, module="test", snapshot="true") as stream:
        read = stream.until(lambda e: e.event == "batch" and e.data["snapshot_complete"])
        assert [e["task"]["task_id"] for e in batch_events(read)] == [old]
        last_id = read[-1].id
    assert last_id
    new = make_task(rest_api)
    with watch(
        rest_api, module="test", snapshot="true", headers={"Last-Event-ID": last_id}
    ) as stream:
        events = until_task(stream, new)
    assert [(e["type"], e["task"]["task_id"]) for e in events] == [("created", new)]


def test_watching_every_module(rest_api: RestApi, reporter: Reporter) -> None:
    reporter.register("backup")
    with watch(rest_api) as stream:
        stream.until(is_batch_with_cursor)
        ours = make_task(rest_api)
        theirs = reporter.create("backup", "dump")
        until_seen(stream, {ours, theirs})
        modules = {e["task"]["module"] for e in batch_events(stream.events)}
        assert modules == {"test", "backup"}


# ---- wait ---------------------------------------------------------------------------------


def test_wait_streams_status_then_end(rest_api: RestApi, reporter: Reporter) -> None:
    reporter.register("backup")
    task = reporter.create("backup", "dump", progress_units="files", progress_total=10)
    with SseStream.open(rest_api, f"tm/v1/wait/{task}") as stream:
        first = stream.next()
        assert first is not None and first.event == "status"
        assert list(first.data) == STATUS_FIELDS
        assert first.data["id"] == task and first.data["state"] == "running"
        reporter.progress(task, 5)
        stream.until(lambda e: e.event == "status" and e.data["progress_completed"] == 5.0)
        reporter.finish(task)
        rest = stream.rest()
        assert rest and rest[-1].event == "end"
        statuses = [e for e in rest if e.event == "status"]
        assert statuses and statuses[-1].data["state"] == "done"
        assert [e.event for e in rest] == ["status"] * len(statuses) + ["end"]
        assert stream.ended


def test_wait_on_a_finished_task_and_a_timeout(rest_api: RestApi) -> None:
    rest_api.json("POST", "task_manager/ttl", {"ttl": 600})
    done = make_task(rest_api)
    finish(rest_api, done, "bad disk")
    with SseStream.open(rest_api, f"tm/v1/wait/{done}") as stream:
        events = stream.rest()
    assert [e.event for e in events] == ["status", "end"]
    assert events[0].data["state"] == "failed" and "bad disk" in events[0].data["error"]
    running = make_task(rest_api)
    started = time.monotonic()
    with SseStream.open(rest_api, f"tm/v1/wait/{running}", {"timeout": 1}) as stream:
        events = stream.rest()
    assert 0.9 <= time.monotonic() - started < 10
    assert [e.event for e in events] == ["status", "error"]
    assert events[0].data["state"] == "running"
    error = events[1].data
    assert error["reason"] == "WAIT_TIMEOUT" and error["code"] == 408 and error["message"]


def test_wait_on_unknown_or_malformed_ids_is_400(rest_api: RestApi) -> None:
    missing = str(uuid4())
    body = error_of(rest_api.send("GET", f"tm/v1/wait/{missing}", timeout=10), 400,
                    "TASK_NOT_FOUND")  # fmt: skip
    assert body["message"] == f"task with id {missing} not found"
    error_of(rest_api.send("GET", "tm/v1/wait/nope", timeout=10), 400, "INVALID_ARGUMENT")


# ---- clients that go away -------------------------------------------------------------------


@pytest.mark.slow
def test_streams_whose_clients_leave_do_not_hold_the_server() -> None:
    thread = start_http_server()
    stopped = False
    try:
        api = RestApi(http_port(thread))
        task = make_task(api)
        streams = []
        for i in range(10):
            w = watch(api, module="test", snapshot="true" if i % 2 else "false")
            assert w.next() is not None
            streams.append(w)
            s = SseStream.open(api, f"tm/v1/wait/{task}")
            assert s.next() is not None
            streams.append(s)
        # And some left before reading a byte.
        for _ in range(5):
            api.send("GET", "tm/v1/watch", {"module": "test"}, stream=True).close()
        for s in streams:
            s.close()
        # Still answering, streams included.
        started = time.monotonic()
        assert api.json("GET", "task_manager/list_modules") == ["test"]
        assert time.monotonic() - started < 2
        with watch(api, module="test") as w:
            w.until(is_batch_with_cursor)
            fresh = make_task(api)
            until_task(w, fresh)
        finish(api, task)
        # And it stops promptly: nothing waits on the readers that left.
        started = time.monotonic()
        thread.stop()
        stopped = True
        assert time.monotonic() - started < 10
    finally:
        if not stopped:
            thread.stop()
