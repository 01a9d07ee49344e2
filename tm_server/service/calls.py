"""How a call ended, as the client sees it: what the interceptors that observe calls share.

A handler that returns ends with ``OK`` (or the code it set); one that
aborted ends with the code it aborted with; one cancelled ended because the
client went away or its deadline passed; anything else escaping a handler is
``UNKNOWN`` (tm's handler wrappers turn errors into statuses, so that is a bug).
"""

from __future__ import annotations

import asyncio
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


__all__ = ["final_code", "split_method"]
