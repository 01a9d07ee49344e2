"""How a call ended, as the client sees it: what the interceptors that observe calls share.

A handler that returns ends with ``OK`` (or the code it set); one that
aborted ends with the code it aborted with; one cancelled ended because the
client went away or its deadline passed; anything else escaping a handler is
``UNKNOWN`` (tm's handler wrappers turn errors into statuses, so that is a bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
    lookup, not a new wrapper; what each call does is the wrapper's.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Returns the method's handler, wrapped (once) by ``_wrap``."""
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        """The handler that serves ``method``'s calls in place of ``handler``."""
        raise NotImplementedError


__all__ = ["WrappingInterceptor", "final_code", "split_method"]
