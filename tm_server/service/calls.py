"""How a call ended, as the client sees it: what the interceptors that observe calls share.

A handler that returns ends with ``OK`` (or the code it set); one that
aborted ends with the code it aborted with; one cancelled ended because the
client went away or its deadline passed; anything else escaping a handler is
``UNKNOWN`` (tm's handler wrappers turn errors into statuses, so that is a bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc


def final_code(context: Any, exc: BaseException | None = None) -> grpc.StatusCode:
    """The status code a call ends with, once its handler returned or raised ``exc``."""
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        if code is None:
            return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
        return code  # type: ignore[no-any-return]
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def split_method(method: str) -> tuple[str, str]:
    """``/tm.v1.TaskManagerService/WaitTask`` as (``tm.v1.TaskManagerService``, ``WaitTask``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that wraps each method's handler once, in ``_wrap``.

    The wrapped handler is kept by method, so a call costs a dictionary
    lookup, not a new wrapper; what each call does is the wrapper's. tm's
    server applies its interceptors as it registers its services
    (``wrap_handler``), so no call pays for grpc's interceptor path: its
    coroutine per interceptor per call, only to find the same handler again.
    Served through ``grpc.aio.server(interceptors=...)``, one behaves the same.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Returns the method's handler, wrapped (once) by ``_wrap``."""
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: Any) -> Any:
        """``method``'s handler wrapped by this interceptor (made once, then kept)."""
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        """The handler that serves ``method``'s calls in place of ``handler``."""
        raise NotImplementedError


def wrap_handler(interceptors: Sequence[WrappingInterceptor], method: str, handler: Any) -> Any:
    """``handler`` as ``interceptors`` serve it, the first outermost (grpc's order)."""
    for interceptor in reversed(interceptors):
        handler = interceptor.wrap(method, handler)
    return handler


__all__ = ["WrappingInterceptor", "final_code", "split_method", "wrap_handler"]
