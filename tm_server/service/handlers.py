"""Wrappers that turn every error of a handler into a proper gRPC status, never UNKNOWN."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Concatenate, NoReturn, TypeVar, cast

import grpc

from tm_client import reason_name
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core import TaskManagerError
from tm_server.core.logs import RateLimitedLog

from .decoding import MalformedRequest
from .decoding import log as decoding_log
from .errors import make_status, status_for

#: The ErrorInfo reason of an unexpected error.
INTERNAL = reason_name(pb.ERROR_REASON_INTERNAL)

log = logging.getLogger(__name__)


class Servicer:
    """What tm's servicers share: logs that bad input cannot amplify, one set per server.

    An error that repeats (every call failing the same way) logs its
    traceback once, then one line per interval with a count; so does a body
    that does not decode.
    """

    def __init__(self) -> None:
        self.unexpected_log = RateLimitedLog(log)
        self.malformed_log = RateLimitedLog(decoding_log)


S = TypeVar("S", bound="Servicer")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


async def abort_with(context: Context, status: grpc.Status) -> NoReturn:
    """Ends the call with ``status`` (its google.rpc details included); raises AbortError."""
    # The grpc type stubs predate abort_with_status on the asyncio context.
    await cast(Any, context).abort_with_status(status)
    raise AssertionError("unreachable: abort_with_status raises")


async def abort_unexpected(
    context: Context, method: str, exc: BaseException, limited: RateLimitedLog
) -> NoReturn:
    """Logs an unexpected error with its traceback and ends the call with a safe INTERNAL."""
    incident = uuid.uuid4().hex[:12]
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = (frame.tb_frame.f_code.co_filename, frame.tb_lineno) if frame is not None else None
    limited.log(
        logging.ERROR,
        (method, type(exc), where),
        "unexpected error in %s (incident %s): %s: %s",
        method,
        incident,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    await abort_with(
        context,
        make_status(
            grpc.StatusCode.INTERNAL,
            f"internal error; the server log has the details (incident {incident})",
            INTERNAL,
            {"incident": incident},
        ),
    )


def unary(
    fn: Callable[Concatenate[S, Req, Context, ...], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Awaitable[Resp]]:
    """Wraps a unary handler: domain errors get their status, anything else INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        if isinstance(request, MalformedRequest):
            await abort_with(context, request.status(fn.__qualname__, self.malformed_log))
        try:
            return await fn(self, request, context)
        except TaskManagerError as exc:
            await abort_with(context, status_for(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_unexpected(context, fn.__name__, exc, self.unexpected_log)

    wrapper.checks_malformed = True  # type: ignore[attr-defined]
    return wrapper


def streaming(
    fn: Callable[Concatenate[S, Req, Context, ...], AsyncIterator[Resp]],
) -> Callable[[S, Req, Context], AsyncIterator[Resp]]:
    """Wraps a server-streaming handler the same way as ``unary``."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
        if isinstance(request, MalformedRequest):
            await abort_with(context, request.status(fn.__qualname__, self.malformed_log))
        try:
            async for item in fn(self, request, context):
                yield item
        except TaskManagerError as exc:
            await abort_with(context, status_for(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:
            await abort_unexpected(context, fn.__name__, exc, self.unexpected_log)

    wrapper.checks_malformed = True  # type: ignore[attr-defined]
    return wrapper
