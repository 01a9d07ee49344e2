"""The durability interceptor: a call that changes the registry replies once it is on disk.

The core writes its records into the journal as it changes (see
``tm_server.journal``); this interceptor makes the reply of every call in
``DURABLE_METHODS`` wait for the batch that carries those records (group
commit: concurrent calls share one disk flush). A server-streaming call
(``OpenSession``) waits before its first message, which is the one that
tells of the change.

While the journal is failing (a full disk), a durable call is refused with
``UNAVAILABLE`` (reason ``JOURNAL_UNAVAILABLE``) before it changes anything,
unless the journal can write again by then; reads are never held back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from tm_server.core import JournalUnavailableError

from .calls import WrappingInterceptor
from .errors import status_for
from .handlers import Context, abort_with

#: Calls whose reply says a change was made, by full method name: they wait for the disk.
#: Progress reports are not among them: they are written within the progress window.
DURABLE_METHODS = frozenset(
    {
        "/tm.v1.TaskManagerService/AbortTask",
        "/tm.v1.TaskManagerService/SetTtl",
        "/tm.v1.TaskManagerService/SetUserTtl",
        "/tm.v1.TaskManagerService/DrainModuleTasks",
        "/tm.v1.TaskReportingService/RegisterModule",
        "/tm.v1.TaskReportingService/UnregisterModule",
        "/tm.v1.TaskReportingService/CreateTask",
        "/tm.v1.TaskReportingService/StartTask",
        "/tm.v1.TaskReportingService/FinishTask",
        "/tm.v1.TaskReportingService/OpenSession",
        "/tm.v1.TaskReportingService/CloseSession",
        "/tm.v1.NodeService/AbortLocal",
        "/tm.v1.TaskManagerTestService/RegisterTestModule",
        "/tm.v1.TaskManagerTestService/UnregisterTestModule",
        "/tm.v1.TaskManagerTestService/CreateTestTask",
        "/tm.v1.TaskManagerTestService/FinishTestTask",
        "/tm.v1.TaskManagerTestService/DeleteTestTask",
    }
)


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    Handler = grpc.RpcMethodHandler


class Durable(Protocol):
    """What the interceptor needs of a journal."""

    @property
    def failure(self) -> str | None:
        """Why the last write failed, while it is failing."""

    def commit(self) -> Awaitable[None]:
        """Resolves once every change made so far is on disk."""


class DurabilityInterceptor(WrappingInterceptor):
    """Holds the replies of durable calls until their changes are on disk."""

    def __init__(self, journal: Durable) -> None:
        super().__init__()
        self._journal = journal

    async def _ready(self, context: Context) -> None:
        # Refuse before changing anything while the disk refuses writes.
        if self._journal.failure is not None:
            await self._durable(context)

    async def _durable(self, context: Context) -> None:
        try:
            await self._journal.commit()
        except JournalUnavailableError as exc:
            await abort_with(context, status_for(exc))

    def _wrap(self, method: str, handler: Handler) -> Handler:
        # Other calls pass as they are.
        if method not in DURABLE_METHODS:
            return handler
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                await self._ready(context)
                reply = await inner(request, context)
                await self._durable(context)
                return reply

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_inner: Any = handler.unary_stream

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await self._ready(context)
                first = True
                async for item in stream_inner(request, context):
                    if first:
                        await self._durable(context)
                        first = False
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
