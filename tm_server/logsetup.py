"""The server's logging: text for people, or one JSON object a line for log shippers.

``configure`` sets up the root logger for ``--log-level`` and
``--log-format``. In the JSON format every line is one object with ``time``
(UTC, ISO 8601), ``level``, ``logger`` and ``message``; a line logged while
an RPC is served also names its ``method``, the client's ``peer`` and the
request's ``task_id`` (when it has one), and a line about how a call ended,
its status ``code``. An exception's traceback is in ``exception``, inside the
same line. The audit log (logger ``tm.audit``), whose messages are JSON
objects already, has their fields merged into the line, not quoted in it.

The per-call fields come from ``current_call``, which ``CallLogInterceptor``
sets for each call (a context variable: one object a call, read only when a
line is written). With ``DEBUG`` on for ``tm.rpc``, the interceptor also logs
one line per call as it ends, with its code and duration; at ``INFO`` nothing
is logged per call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tm_server.service.calls import final_code, split_method

from .service.calls import WrappingInterceptor

#: The formats ``--log-format`` takes.
LOG_FORMATS = ("text", "json")
#: The text format's lines.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The audit log's logger (``service.auth``): its messages are JSON objects.
AUDIT_LOGGER = "tm.audit"
#: The logger of the per-call lines (at DEBUG).
RPC_LOGGER = "tm.rpc"
#: Record attributes a JSON line carries when they are set (the call's, or a line's own).
CONTEXT_FIELDS = ("method", "peer", "task_id", "session_id", "code", "duration_ms")
# An id longer than this is not one (a request's text is the client's): it is cut.
_MAX_ID = 64
# Keys of a JSON line that an audit entry's fields do not replace.
_OWN_FIELDS = frozenset(("time", "level", "logger", "message"))

rpc_log = logging.getLogger(RPC_LOGGER)


class CallInfo:
    """The RPC being served: what a log line written meanwhile can name."""

    __slots__ = ("context", "done", "method", "request")

    def __init__(self, method: str, context: Any, request: Any) -> None:
        self.method = method
        self.context = context
        self.request = request
        # Set when the call ends: work it started that logs later (a timer,
        # a background task) is not attributed to it.
        self.done = False

    def fields(self) -> dict[str, str]:
        """The call's method, peer and task id (read now, when a line needs them)."""
        found = {"method": self.method}
        try:
            peer = self.context.peer()
        except Exception:
            peer = None
        if peer:
            found["peer"] = str(peer)
        for name in ("task_id", "session_id"):
            value = getattr(self.request, name, None)
            if isinstance(value, str) and value:
                found[name] = value[:_MAX_ID]
        return found


#: The call being served, if any (each call runs in a task of its own, with its own value).
current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "tm_call", default=None
)


class CallContextFilter(logging.Filter):
    """Puts the call being served on each record (fields a record sets itself win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Adds the call's fields; never drops a record."""
        call = current_call.get()
        if call is not None and not call.done:
            for name, value in call.fields().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def _audit_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """An audit record's entry: its ``audit`` attribute, or its message's JSON object."""
    given = getattr(record, "audit", None)
    if isinstance(given, dict):
        return given
    message = record.getMessage()
    if not message.startswith("{"):
        return None
    try:
        entry = json.loads(message)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        entry = _audit_fields(record) if record.name == AUDIT_LOGGER else None
        if entry is not None:
            line["message"] = (
                " ".join(
                    str(entry[k]) for k in ("action", "outcome") if entry.get(k) not in (None, "")
                )
                or "audit"
            )
        else:
            line["message"] = record.getMessage()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                line[name] = value
        if entry is not None:
            line.update((k, v) for k, v in entry.items() if k not in _OWN_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Logs to stderr at ``level`` in ``log_format`` (``text`` or ``json``).

    Like ``logging.basicConfig``, it leaves a root logger that has handlers
    already as it is (an application that set up its own logging).

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(CallContextFilter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


class CallLogInterceptor(WrappingInterceptor):
    """Sets ``current_call`` for every call; with ``log_calls``, logs each as it ends (DEBUG).

    Installed only when it has something to do: JSON lines to enrich, or
    ``tm.rpc`` at DEBUG.
    """

    def __init__(self, *, log_calls: bool) -> None:
        super().__init__()
        self._log_calls = log_calls

    def _ended(self, call: CallInfo, started: float, exc: BaseException | None) -> None:
        if self._log_calls and rpc_log.isEnabledFor(logging.DEBUG):
            code = final_code(call.context, exc).name
            elapsed = (time.perf_counter() - started) * 1000
            rpc_log.debug(
                "%s %s in %.3f ms", split_method(call.method)[1], code, elapsed,
                extra={"code": code, "duration_ms": round(elapsed, 3)},
            )  # fmt: skip
        call.done = True

    def _wrap(self, method: str, handler: Any) -> Any:
        ended = self._ended

        def unary(inner: Any) -> Callable[[Any, Any], Awaitable[Any]]:
            async def wrapper(request: Any, context: Any) -> Any:
                call = CallInfo(method, context, request)
                current_call.set(call)
                started = time.perf_counter()
                try:
                    reply = await inner(request, context)
                except BaseException as exc:
                    ended(call, started, exc)
                    raise
                ended(call, started, None)
                return reply

            return wrapper

        def stream(inner: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
            async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
                call = CallInfo(method, context, request)
                current_call.set(call)
                started = time.perf_counter()
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    ended(call, started, exc)
                    raise
                ended(call, started, None)

            return wrapper

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=unary(handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=stream(handler.unary_stream))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=stream(handler.stream_stream))
        return handler


__all__ = [
    "LOG_FORMATS",
    "CallContextFilter",
    "CallInfo",
    "CallLogInterceptor",
    "JsonFormatter",
    "configure",
    "current_call",
]
