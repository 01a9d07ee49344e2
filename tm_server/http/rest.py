"""ScyllaDB's ``/task_manager`` REST API, path for path, over tm's task manager.

Each handler is the gRPC servicer's counterpart: the same core call, its
answer in ScyllaDB's JSON (``shapes``). Listing without ``page_size`` gives
the whole list as ScyllaDB does, streamed a page at a time so a big module
never sits in memory as one body; with it, one page and the next page's
token in ``X-TM-Next-Page-Token``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from tm_server.core import TaskManager, TaskState, WaitTimeoutError
from tm_server.core.types import ListFilter
from tm_server.core.validation import MAX_PAGE_SIZE

from . import params
from .errors import HttpError, bad_argument
from .routing import Call, Route, module_field, task_field
from .shapes import stats_json, status_json

_TM = "/tm.v1.TaskManagerService/"
#: The header that carries the next page's token ("" / absent at the end).
NEXT_PAGE_HEADER = "X-TM-Next-Page-Token"
#: Statuses of a recursive status (or entries of a whole listing) written at a time.
_CHUNK = 1000
_STATES = {state.value: state for state in TaskState}


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer."""
    return web.Response(
        status=status, text=json.dumps(value), content_type="application/json", headers=headers
    )


def empty_response() -> web.Response:
    """ScyllaDB's void answer (an empty body, 200)."""
    return web.Response(status=200)


def list_filter(request: web.Request) -> ListFilter:
    """The listing's (and a watch's) filters from the query."""
    states: set[TaskState] = set()
    for value in params.texts(request, "state"):
        state = _STATES.get(value.lower())
        if state is None:
            raise bad_argument("state", f"{value!r} is not a task state ({', '.join(_STATES)})")
        states.add(state)
    return ListFilter(
        internal=params.flag(request, "internal"),
        keyspace=params.text(request, "keyspace"),
        table=params.text(request, "table"),
        states=frozenset(states),
        types=frozenset(params.texts(request, "type")),
    )


class ScyllaRest:
    """The handlers; ``routes`` lists them with the RPCs they stand for."""

    def __init__(self, manager: TaskManager) -> None:
        self._tm = manager

    def routes(self) -> list[Route]:
        """ScyllaDB's paths."""
        base = "/task_manager"
        return [
            Route("GET", f"{base}/list_modules", _TM + "ListModules", self.list_modules),
            Route(
                "GET", f"{base}/list_module_tasks/{{module}}", _TM + "ListModuleTasks",
                self.list_module_tasks, module_field,
            ),
            Route(
                "GET", f"{base}/task_status/{{task_id}}", _TM + "GetTaskStatus",
                self.task_status, task_field,
            ),
            Route(
                "POST", f"{base}/abort_task/{{task_id}}", _TM + "AbortTask",
                self.abort_task, _abort_fields,
            ),
            Route(
                "GET", f"{base}/wait_task/{{task_id}}", _TM + "WaitTask",
                self.wait_task, task_field,
            ),
            Route(
                "GET", f"{base}/task_status_recursive/{{task_id}}", _TM + "GetTaskStatusRecursive",
                self.task_status_recursive, task_field,
            ),
            Route("GET", f"{base}/ttl", _TM + "GetTtl", self.get_ttl),
            Route("POST", f"{base}/ttl", _TM + "SetTtl", self.set_ttl, _ttl_fields),
            Route("GET", f"{base}/user_ttl", _TM + "GetUserTtl", self.get_user_ttl),
            Route(
                "POST", f"{base}/user_ttl", _TM + "SetUserTtl", self.set_user_ttl, _user_ttl_fields
            ),
            Route(
                "POST", f"{base}/drain/{{module}}", _TM + "DrainModuleTasks",
                self.drain, module_field,
            ),
        ]  # fmt: skip

    async def list_modules(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/list_modules``."""
        return json_response(await self._tm.list_modules())

    async def list_module_tasks(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/list_module_tasks/{module}``: the whole list, or one page."""
        request = call.request
        module = request.match_info["module"]
        flt = list_filter(request)
        size = params.integer(request, "page_size", minimum=1, maximum=MAX_PAGE_SIZE)
        token = params.text(request, "page_token")
        if size is not None or token:
            entries, following = await self._tm.list_module_tasks(
                module, flt, page_size=size or 0, page_token=token
            )
            headers = {NEXT_PAGE_HEADER: following} if following else None
            return json_response([stats_json(e) for e in entries], headers=headers)
        # The first page before anything is sent: an unknown module is a 400, not a cut stream.
        entries, following = await self._tm.list_module_tasks(module, flt, page_size=MAX_PAGE_SIZE)
        if not following:
            return json_response([stats_json(e) for e in entries])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b"[")
        first = True
        while True:
            if entries:
                text = ", ".join(json.dumps(stats_json(e)) for e in entries)
                await response.write((text if first else ", " + text).encode())
                first = False
            if not following:
                break
            entries, following = await self._tm.list_module_tasks(
                module, flt, page_size=MAX_PAGE_SIZE, page_token=following
            )
        await response.write(b"]")
        await response.write_eof()
        return response

    async def task_status(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/task_status/{task_id}``."""
        return json_response(status_json(await self._tm.get_status(params.task_id(call.request))))

    async def abort_task(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager/abort_task/{task_id}`` (tm: ``?reason=``)."""
        request = call.request
        await self._tm.abort_task(
            params.task_id(request),
            reason=params.text(request, "reason"),
            principal="" if call.principal is None else call.principal.name,
        )
        return empty_response()

    async def wait_task(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/wait_task/{task_id}?timeout=``: 408 when the timeout passes."""
        request = call.request
        task_id = params.task_id(request)
        timeout = params.integer(request, "timeout", minimum=0, maximum=2**32 - 1)
        try:
            status = await self._tm.wait_task(task_id, None if timeout is None else float(timeout))
        except WaitTimeoutError as exc:
            raise HttpError(408, str(exc), exc.reason, {"task_id": str(task_id)}) from None
        return json_response(status_json(status))

    async def task_status_recursive(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/task_status_recursive/{task_id}``: the tree, BFS, streamed."""
        request = call.request
        statuses = self._tm.get_status_recursive(params.task_id(request))
        # The root before anything is sent: an unknown task is a 400.
        try:
            first = await anext(statuses)
        except StopAsyncIteration:
            return json_response([])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = [json.dumps(status_json(first))]
        opened = False
        async for status in statuses:
            chunk.append(json.dumps(status_json(status)))
            if len(chunk) == _CHUNK:
                await response.write((", " if opened else "[").encode() + ", ".join(chunk).encode())
                opened = True
                chunk.clear()
        await response.write(
            ((", " if opened else "[") + ", ".join(chunk) + "]").encode() if chunk else b"]"
        )
        await response.write_eof()
        return response

    async def get_ttl(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/ttl``."""
        return json_response(self._tm.task_ttl)

    async def set_ttl(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager/ttl?ttl=``: the previous value."""
        seconds = params.integer(call.request, "ttl", required=True)
        assert seconds is not None
        return json_response(await self._tm.set_task_ttl(seconds))

    async def get_user_ttl(self, call: Call) -> web.StreamResponse:
        """``GET /task_manager/user_ttl``."""
        return json_response(self._tm.user_task_ttl)

    async def set_user_ttl(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager/user_ttl?user_ttl=``: the previous value."""
        seconds = params.integer(call.request, "user_ttl", required=True)
        assert seconds is not None
        return json_response(await self._tm.set_user_task_ttl(seconds))

    async def drain(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager/drain/{module}``."""
        await self._tm.drain(call.request.match_info["module"])
        return empty_response()


def _abort_fields(request: web.Request) -> Any:
    fields = task_field(request)
    fields.reason = request.query.get("reason", "")
    return fields


def _ttl_fields(request: web.Request) -> Any:
    return SimpleNamespace(ttl_seconds=request.query.get("ttl", ""))


def _user_ttl_fields(request: web.Request) -> Any:
    return SimpleNamespace(user_ttl_seconds=request.query.get("user_ttl", ""))


__all__ = ["NEXT_PAGE_HEADER", "ScyllaRest", "empty_response", "json_response", "list_filter"]
