"""``watch_tasks`` across broken streams, against grpcio-testing's channel double.

The test plays the server, so what a watch does on each kind of break (a
network outage, a break within the snapshot, an expired cursor, a reader that
fell behind, a stream that ends when it never should) is checked exactly:
which request the next stream sends, and what the caller sees.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any
from uuid import UUID, uuid4

import grpc
import grpc_testing
import pytest

from tm_client import (
    CursorExpiredError,
    FailedPreconditionError,
    InternalError,
    ResourceExhaustedError,
    TaskEventType,
    TaskManagerClient,
    TaskState,
    TaskWatch,
    UnavailableError,
    WatchBatch,
    WatchFellBehindError,
)
from tm_client.pb import task_manager_pb2 as pb

from .test_client import details, method

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def channel() -> Iterator[grpc_testing.Channel]:
    yield grpc_testing.channel(
        [pb.DESCRIPTOR.services_by_name["TaskManagerService"]], grpc_testing.strict_real_time()
    )


def event(kind: Any, task_id: UUID, state: Any = pb.TASK_STATE_RUNNING, **fields: Any) -> Any:
    task = pb.TaskStats(task_id=str(task_id), state=state, kind=pb.TASK_KIND_NODE, **fields)
    return pb.TaskEvent(type=kind, task=task)


class Server:
    """Takes the watch's streams one at a time and answers them."""

    def __init__(self, channel: grpc_testing.Channel) -> None:
        self.channel = channel
        self.rpc: Any = None

    def take(self) -> pb.WatchTasksRequest:
        _, request, self.rpc = self.channel.take_unary_stream(method("WatchTasks"))
        return request  # type: ignore[no-any-return]

    def send(self, *events: Any, cursor: str = "", complete: bool = False) -> None:
        self.rpc.send_response(
            pb.WatchTasksResponse(events=events, cursor=cursor, snapshot_complete=complete)
        )

    def end(self, code: grpc.StatusCode, reason: str = "") -> None:
        trailing = details(code, "the server says so", reason) if reason else ()
        self.rpc.terminate(trailing, code, "the server says so")


class Reader:
    """Reads ``count`` batches from a new watch in the pool, handing each over as it comes.

    grpcio-testing drops the responses a client has not read yet when the
    test ends the stream, so the test waits for them (``got``) before it
    ends one. ``future`` is the watch's cursor once ``count`` came, or its error.
    """

    def __init__(self, open_: Callable[[], TaskWatch], count: int = 1000) -> None:
        self._batches: queue.Queue[WatchBatch] = queue.Queue()
        self.future: Future[str] = Future()
        # A daemon thread: a test that fails leaves no reader to wait for.
        threading.Thread(target=self._run, args=(open_, count), daemon=True).start()

    def _run(self, open_: Callable[[], TaskWatch], count: int) -> None:
        try:
            with open_() as watch:
                for _ in range(count):
                    self._batches.put(next(watch))
                self.future.set_result(watch.cursor)
        except BaseException as exc:
            self.future.set_exception(exc)

    def got(self, count: int) -> list[WatchBatch]:
        """Waits for ``count`` more batches (raising what the watch raised, if it did)."""
        out: list[WatchBatch] = []
        deadline = time.monotonic() + 10
        while len(out) < count:
            try:
                out.append(self._batches.get(timeout=0.05))
            except queue.Empty:
                if self.future.done():
                    self.future.result()  # raises the watch's error
                    raise AssertionError(f"the watch ended after {len(out)} of {count}") from None
                assert time.monotonic() < deadline, f"got {len(out)} of {count} batches"
        return out


def test_a_break_resumes_from_the_last_cursor_with_the_same_filters(
    channel: grpc_testing.Channel,
) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    a, b = uuid4(), uuid4()
    reader = Reader(
        lambda: client.watch_tasks(
            "repair", keyspace="ks", states=["running", TaskState.DONE], types="repair",
            snapshot=True, full_status=True,
        ),
        count=4,
    )  # fmt: skip
    server = Server(channel)
    first = server.take()
    assert first.module == "repair" and first.keyspace == "ks" and first.snapshot
    assert list(first.states) == [pb.TASK_STATE_RUNNING, pb.TASK_STATE_DONE]
    assert list(first.types) == ["repair"] and first.full_status and not first.cursor
    server.send(event(pb.TASK_EVENT_TYPE_EXISTING, a))
    server.send(cursor="c1", complete=True)
    server.send(event(pb.TASK_EVENT_TYPE_CREATED, b), cursor="c2")
    batches = reader.got(3)
    server.end(grpc.StatusCode.UNAVAILABLE)  # the node went away
    again = server.take()
    # The next stream resumes after the last batch handed out: no snapshot again.
    assert again.cursor == "c2" and not again.snapshot
    assert (again.module, again.keyspace, list(again.types)) == ("repair", "ks", ["repair"])
    assert list(again.states) == list(first.states) and again.full_status
    server.send(event(pb.TASK_EVENT_TYPE_FINISHED, b, pb.TASK_STATE_DONE), cursor="c3")
    batches += reader.got(1)
    assert reader.future.result(10) == "c3"
    kinds = [[(e.type, e.task.task_id) for e in batch] for batch in batches]
    assert kinds == [
        [(TaskEventType.EXISTING, a)], [], [(TaskEventType.CREATED, b)],
        [(TaskEventType.FINISHED, b)],
    ]  # fmt: skip
    assert [b.cursor for b in batches] == ["", "c1", "c2", "c3"]
    assert batches[1].snapshot_complete and not any(b.restarted for b in batches)
    assert batches[3].events[0].task.state is TaskState.DONE


def test_a_break_within_the_snapshot_starts_it_again_flagged(channel: grpc_testing.Channel) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    a = uuid4()
    reader = Reader(lambda: client.watch_tasks(snapshot=True), count=3)
    server = Server(channel)
    assert server.take().snapshot
    server.send(event(pb.TASK_EVENT_TYPE_EXISTING, a))
    batches = reader.got(1)
    server.end(grpc.StatusCode.UNAVAILABLE)
    again = server.take()
    assert again.snapshot and not again.cursor  # a snapshot has no cursor to resume
    server.send(event(pb.TASK_EVENT_TYPE_EXISTING, a))
    server.send(cursor="c1", complete=True)
    batches += reader.got(2)
    assert [(b.restarted, b.restart_reason) for b in batches] == [
        (False, ""), (True, "UNAVAILABLE"), (False, ""),
    ]  # fmt: skip
    assert reader.future.result(10) == "c1"


def test_a_break_before_anything_came_is_retried_as_asked(channel: grpc_testing.Channel) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    reader = Reader(lambda: client.watch_tasks("m", snapshot=True), count=1)
    server = Server(channel)
    server.take()
    server.end(grpc.StatusCode.UNAVAILABLE)  # not reachable yet
    assert server.take().snapshot
    server.send(cursor="c1", complete=True)
    assert not reader.got(1)[0].restarted  # nothing was handed out: nothing to start over


def test_an_expired_cursor_raises_typed_unless_resnapshot(channel: grpc_testing.Channel) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    reader = Reader(lambda: client.watch_tasks("m", cursor="old"))
    server = Server(channel)
    assert server.take().cursor == "old"
    server.end(grpc.StatusCode.FAILED_PRECONDITION, "CURSOR_EXPIRED")
    with pytest.raises(CursorExpiredError) as err:
        reader.future.result(10)
    assert isinstance(err.value, FailedPreconditionError) and err.value.reason == "CURSOR_EXPIRED"
    assert not isinstance(err.value, grpc.RpcError)

    a = uuid4()
    reader = Reader(lambda: client.watch_tasks("m", cursor="old", resnapshot=True), 2)
    server.take()
    server.end(grpc.StatusCode.FAILED_PRECONDITION, "CURSOR_EXPIRED")
    again = server.take()
    assert again.snapshot and not again.cursor and again.module == "m"
    server.send(event(pb.TASK_EVENT_TYPE_EXISTING, a))
    server.send(cursor="new", complete=True)
    batches = reader.got(2)
    assert batches[0].restarted and batches[0].restart_reason == "CURSOR_EXPIRED"
    assert batches[0].cursor == ""  # the expired cursor resumes nothing any more
    assert batches[1].snapshot_complete and not batches[1].restarted
    assert reader.future.result(10) == "new"


def test_a_reader_that_fell_behind_gets_a_new_snapshot_once_per_catch_up(
    channel: grpc_testing.Channel,
) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    a = uuid4()
    reader = Reader(lambda: client.watch_tasks("m", resnapshot=True))
    server = Server(channel)
    server.take()
    server.send(cursor="now")
    reader.got(1)
    server.end(grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_FELL_BEHIND")
    assert server.take().snapshot
    server.send(event(pb.TASK_EVENT_TYPE_EXISTING, a))
    assert reader.got(1)[0].restart_reason == "WATCH_FELL_BEHIND"
    # Behind again before the new snapshot completed: it cannot keep up, say so.
    server.end(grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_FELL_BEHIND")
    with pytest.raises(WatchFellBehindError) as err:
        reader.future.result(10)
    assert isinstance(err.value, ResourceExhaustedError)
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_without_patience_a_break_is_the_caller_s_and_an_ok_end_is_an_error(
    channel: grpc_testing.Channel,
) -> None:
    plain = TaskManagerClient(channel=channel, resume_seconds=0)
    reader = Reader(lambda: plain.watch_tasks())
    server = Server(channel)
    server.take()
    server.send(cursor="now")
    reader.got(1)
    server.end(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(UnavailableError):
        reader.future.result(10)

    reader = Reader(lambda: plain.watch_tasks())
    server.take()
    server.send(cursor="now")
    reader.got(1)
    server.end(grpc.StatusCode.OK)  # a tm server never ends a watch by itself
    with pytest.raises(InternalError) as err:
        reader.future.result(10)
    assert err.value.reason == "WATCH_ENDED"


def test_filters_are_checked_before_any_call(channel: grpc_testing.Channel) -> None:
    client = TaskManagerClient(channel=channel)
    with pytest.raises(ValueError, match="'sleeping' is not a valid TaskState"):
        client.watch_tasks(states=["sleeping"])
    with pytest.raises(ValueError):
        client.list_tasks_page("m", states=["sleeping"])
