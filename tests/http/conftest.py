"""Fixtures of the HTTP tests: a real server with its HTTP side, a REST caller, an SSE reader.

The server is an embedded ``TmServer`` (``tests/server_fixture.py``) on
127.0.0.1:0 for gRPC and for HTTP (``http_address``); the tests talk to it
with ``requests``, as ScyllaDB's own REST tests talk to ScyllaDB.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
import requests

from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc

from ..server_fixture import ServerThread

T = TypeVar("T")

#: ScyllaDB's time format: ISO 8601 UTC at second resolution.
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
EPOCH = "1970-01-01T00:00:00Z"

#: ``task_status``'s fields, in order (docs/http.md).
STATUS_FIELDS = [
    # ScyllaDB's, in ScyllaDB's order...
    "id", "type", "kind", "scope", "state", "is_abortable", "creation_time", "start_time",
    "end_time", "error", "parent_id", "sequence_number", "shard", "keyspace", "table", "entity",
    "progress_units", "progress_total", "progress_completed", "children_ids",
    # ...then tm's.
    "module", "internal", "user_task", "abort_requested", "node", "children_count",
    "expire_time", "owner", "abort", "unreachable_nodes", "last_progress_time", "progress_rate",
    "estimated_end_time",
]  # fmt: skip
STATS_FIELDS = [
    "task_id", "state", "type", "kind", "scope", "keyspace", "table", "entity",
    "sequence_number", "shard", "creation_time", "start_time", "end_time",
    "progress_completed", "progress_total", "module", "internal",
]  # fmt: skip


def start_http_server(**config: Any) -> ServerThread:
    """A started ``ServerThread`` that also serves HTTP on a port of its own."""
    config.setdefault("http_address", "127.0.0.1:0")
    return ServerThread(**config).start()


def http_port(thread: ServerThread) -> int:
    assert thread.server is not None
    port = thread.server.http_port
    assert isinstance(port, int) and port > 0, port
    return port


class RestApi:
    """Calls the server's HTTP side: ``send("GET", "task_manager/list_modules")``.

    ``headers`` go on every call (a bearer token, say); ``session`` keeps
    cookies between calls (a browser's login).
    """

    def __init__(
        self,
        port: int,
        *,
        scheme: str = "http",
        host: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
        verify: Any = True,
        session: requests.Session | None = None,
    ) -> None:
        self.port = port
        self.base = f"{scheme}://{host}:{port}"
        self.headers = dict(headers or {})
        self.verify = verify
        self.session = session

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def send(self, method: str, path: str, params: Any = None, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        call: Any = self.session.request if self.session is not None else requests.request
        response: requests.Response = call(
            method, self.url(path), params=params, headers=headers, verify=self.verify, **kwargs
        )
        return response

    def json(self, method: str, path: str, params: Any = None, **kwargs: Any) -> Any:
        """``send``, checked to be 200, and its JSON."""
        response = self.send(method, path, params, **kwargs)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()


def error_of(response: requests.Response, status: int, reason: str | None = None) -> dict[str, Any]:
    """The JSON error body of ``response``, checked to have ``status`` (and ``reason``).

    Every error is ``{"message", "code", "reason"}``, with ``code`` the HTTP status.
    """
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Content-Type", "").startswith("application/json"), (
        response.headers.get("Content-Type"),
        response.text,
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert body.get("code") == status, body
    assert isinstance(body.get("reason"), str) and body["reason"], body
    if reason is not None:
        assert body["reason"] == reason, body
    return body


def eventually(check: Callable[[], T | None], timeout: float = 10, what: str = "it") -> T:
    """Polls ``check`` until it returns something other than ``None`` or False."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- Server-Sent Events ----------------------------------------------------------------------


@dataclass
class SseEvent:
    """One event of a stream: its ``event:`` name, ``id:`` (or None) and ``data:`` parsed."""

    event: str
    id: str | None
    data: Any
    raw: str


class SseStream:
    """Reads a ``text/event-stream`` answer event by event (comments skipped).

    ``events`` keeps every event read; ``comments`` every comment line.
    """

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.events: list[SseEvent] = []
        self.comments: list[str] = []
        self.retry: str | None = None
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = ""
        self._lines: list[str] = []
        self.ended = False

    @classmethod
    def open(
        cls,
        api: RestApi,
        path: str,
        params: Any = None,
        *,
        read_timeout: float = 15,
        headers: dict[str, str] | None = None,
    ) -> SseStream:
        response = api.send(
            "GET", path, params, stream=True, timeout=(5, read_timeout), headers=headers or {}
        )
        assert response.status_code == 200, (response.status_code, response.text)
        content_type = response.headers.get("Content-Type", "")
        assert content_type.startswith("text/event-stream"), content_type
        return cls(response)

    def _line(self) -> str | None:
        while not self._lines:
            # Lines end with \r\n, \n or \r; a lone \r at the end may be half of \r\n.
            parts = re.split(r"\r\n|\n|\r(?!$)", self._buffer)
            if len(parts) > 1:
                self._lines, self._buffer = parts[:-1], parts[-1]
                break
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return None
            self._buffer += chunk.decode("utf-8")
        return self._lines.pop(0)

    def next(self) -> SseEvent | None:
        """The next event, or ``None`` once the stream ended."""
        name, event_id = "message", None
        data: list[str] = []
        seen = False
        while True:
            line = self._line()
            if line is None:
                self.ended = True
                return None
            if line == "":
                if not seen:
                    # No data: nothing to dispatch (as EventSource; e.g. a lone "retry:").
                    name, event_id = "message", None
                    continue
                raw = "\n".join(data)
                parsed: Any = json.loads(raw) if raw else None
                event = SseEvent(name, event_id, parsed, raw)
                self.events.append(event)
                return event
            if line.startswith(":"):
                self.comments.append(line)
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)
                seen = True
            elif field == "retry":
                self.retry = value

    def until(self, check: Callable[[SseEvent], bool], limit: int = 1000) -> list[SseEvent]:
        """Reads events until one passes ``check``; returns those read (that one last)."""
        read: list[SseEvent] = []
        for _ in range(limit):
            event = self.next()
            assert event is not None, f"the stream ended first; read {[e.raw for e in read]}"
            read.append(event)
            if check(event):
                return read
        raise AssertionError(f"no such event in {limit}")

    def rest(self) -> list[SseEvent]:
        """Every event up to the end of the stream."""
        read: list[SseEvent] = []
        while (event := self.next()) is not None:
            read.append(event)
        return read

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch_events(events: list[SseEvent]) -> list[dict[str, Any]]:
    """The task events of a watch's ``batch`` events, in order."""
    out: list[dict[str, Any]] = []
    for event in events:
        if event.event == "batch":
            out.extend(event.data["events"])
    return out


# ---- tasks a producer reports (progress, types, abortable) ------------------------------------


class Reporter:
    """Reports tasks of any module over gRPC, as a producer does (``metadata``: its token)."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub: Any = rpb_grpc.TaskReportingServiceStub(self.channel)
        self.metadata = () if token is None else (("authorization", f"Bearer {token}"),)

    def register(self, module: str) -> None:
        self.stub.RegisterModule(
            rpb.RegisterModuleRequest(module=module), metadata=self.metadata, timeout=10
        )

    def create(self, module: str, type: str = "dump", **fields: Any) -> str:
        fields.setdefault("start", True)
        reply = self.stub.CreateTask(
            rpb.CreateTaskRequest(module=module, type=type, **fields),
            metadata=self.metadata,
            timeout=10,
        )
        return str(reply.status.id)

    def start(self, task_id: str) -> None:
        self.stub.StartTask(
            rpb.StartTaskRequest(task_id=task_id), metadata=self.metadata, timeout=10
        )

    def progress(self, task_id: str, completed: float, total: float | None = None) -> None:
        self.stub.ReportProgress(
            rpb.ReportProgressRequest(task_id=task_id, completed=completed, total=total),
            metadata=self.metadata,
            timeout=10,
        )

    def finish(self, task_id: str, error: str | None = None) -> None:
        self.stub.FinishTask(
            rpb.FinishTaskRequest(task_id=task_id, error=error), metadata=self.metadata, timeout=10
        )

    def close(self) -> None:
        self.channel.close()


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """Three shards, node "node-a", the test service, HTTP on a port of its own."""
    thread = start_http_server()
    yield thread
    thread.stop()


@pytest.fixture
def rest_api(server: ServerThread) -> RestApi:
    return RestApi(http_port(server))


@pytest.fixture
def reporter(server: ServerThread) -> Iterator[Reporter]:
    r = Reporter(server.target)
    yield r
    r.close()


def make_task(api: RestApi, **params: Any) -> str:
    """A test task made over ScyllaDB's test API; its id."""
    task_id = api.json("POST", "task_manager_test/test_task", params)
    assert isinstance(task_id, str)
    return task_id


def finish(api: RestApi, task_id: str, error: str | None = None) -> None:
    """Finishes a test task (failed with ``error``) over ScyllaDB's test API."""
    params = {} if error is None else {"error": error}
    resp = api.send("POST", f"task_manager_test/finish_test_task/{task_id}", params)
    assert resp.status_code == 200, resp.text
