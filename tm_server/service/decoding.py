"""Request bodies that do not decode: INVALID_ARGUMENT for the caller, not UNKNOWN.

grpcio calls a method's request deserializer before the handler runs; when it
raises (a truncated message, a bad tag, invalid UTF-8 in a string field),
grpcio answers ``UNKNOWN`` with "Unexpected <class ...DecodeError>" and logs a
kilobyte of traceback at ERROR, one per bad request. So every service is
registered here with deserializers that never raise: a body that does not
decode becomes a ``MalformedRequest``, and the handler (tm's own wrappers in
``handlers``, a guard for grpc's health and reflection services) answers it
with ``INVALID_ARGUMENT`` (reason ``MALFORMED_REQUEST``), logging one
rate-limited line. Nothing is added per call: the deserializers are swapped
once, at registration, and a body that decodes costs what it did.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import grpc

from tm_client import reason_name
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core.logs import RateLimitedLog

from .calls import WrappingInterceptor, wrap_handler
from .errors import make_status

# grpc's RpcMethodHandler (a named tuple at run time; its stubs type it loosely).
Handler = Any

log = logging.getLogger(__name__)
# For grpc's own services (health, reflection); tm's servicers have their own.
_malformed_log = RateLimitedLog(log)

#: The ErrorInfo reason of a request body that does not decode.
MALFORMED_REQUEST = reason_name(pb.ERROR_REASON_MALFORMED_REQUEST)
QUOTA_EXCEEDED = reason_name(pb.ERROR_REASON_QUOTA_EXCEEDED)


class MalformedRequest:
    """What a request deserializer returns for bytes that are not its message."""

    __slots__ = ("message_type", "size")

    def __init__(self, message_type: str, size: int) -> None:
        self.message_type = message_type
        self.size = size

    def status(self, method: str, limited: RateLimitedLog = _malformed_log) -> grpc.Status:
        """Logs one rate-limited line and returns the INVALID_ARGUMENT to answer with."""
        limited.log(
            logging.INFO,
            method,
            "refused a request body to %s that is not a valid %s (%d bytes)",
            method,
            self.message_type,
            self.size,
        )
        return make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is not a valid {self.message_type} message "
            "(a truncated message, a wrong field type or invalid UTF-8 in a string)",
            MALFORMED_REQUEST,
            {"message_type": self.message_type},
        )


class OversizedRequest(MalformedRequest):
    """What a request deserializer returns for a body past the server's ``--max-request-bytes``."""

    __slots__ = ("limit",)

    def __init__(self, message_type: str, size: int, limit: int) -> None:
        super().__init__(message_type, size)
        self.limit = limit

    def status(self, method: str, limited: RateLimitedLog = _malformed_log) -> grpc.Status:
        """Logs one rate-limited line and returns the RESOURCE_EXHAUSTED to answer with."""
        limited.log(logging.INFO, method, "refused a %d-byte request to %s", self.size, method)
        return make_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request is {self.size} bytes, past this server's limit of {self.limit} "
            "(--max-request-bytes)",
            QUOTA_EXCEEDED,
            {"quota": "request_bytes", "limit": str(self.limit), "message_type": self.message_type},
        )


def _tolerant(
    deserialize: Callable[[bytes], Any], message_type: str, limit: int | None = None
) -> Callable[[bytes], Any]:
    def deserialize_or_mark(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return OversizedRequest(message_type, len(data), limit)
        try:
            return deserialize(data)
        except Exception:  # DecodeError, or whatever a deserializer raises on bad bytes
            return MalformedRequest(message_type, len(data))

    return deserialize_or_mark


def _message_type(deserialize: Callable[[bytes], Any]) -> str:
    # Generated handlers pass a message class's FromString; its class names the type.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _guard(handler: Handler, method: str) -> Handler:
    """Wraps a behaviour that does not check for ``MalformedRequest`` itself."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any], bad: MalformedRequest) -> None:
        await cast(Any, context).abort_with_status(bad.status(method))

    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, MalformedRequest):
                await refuse(context, request)
            yield request

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        @functools.wraps(inner_uu)
        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, MalformedRequest):
                await refuse(context, request)
            return await inner_uu(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        @functools.wraps(inner_us)
        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, MalformedRequest):
                await refuse(context, request)
            async for response in inner_us(request, context):
                yield response

        return handler._replace(unary_stream=unary_stream)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        @functools.wraps(inner_su)
        async def stream_unary(requests: Any, context: Any) -> Any:
            return await inner_su(checked(requests, context), context)

        return handler._replace(stream_unary=stream_unary)
    inner_ss = handler.stream_stream
    assert inner_ss is not None

    @functools.wraps(inner_ss)
    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async for response in inner_ss(checked(requests, context), context):
            yield response

    return handler._replace(stream_stream=stream_stream)


def _passing_bytes(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    # For a handler that yields some replies already encoded (marked
    # ``sends_encoded``): one encoding shared by every stream it goes to.
    def serializer(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serializer


def _behaviour(handler: Handler) -> Any:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


class _Captured:
    """Stands in for the server while a generated ``add_*_to_server`` registers a service."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, Handler]]] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive by name below

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Handler]) -> None:
        self.services.append((name, handlers))


def service_handlers(
    add_to_server: Callable[[Any, Any], None], servicer: Any
) -> list[tuple[str, dict[str, Handler]]]:
    """Each service's method handlers by name, as a generated ``add_*_to_server`` makes them."""
    captured = _Captured()
    add_to_server(servicer, captured)
    return captured.services


def register_generic(server: grpc.aio.Server, name: str, handlers: dict[str, Handler]) -> None:
    """Registers a service's handlers as a generic handler only, not as registered methods.

    grpcio's asyncio server keeps a call request pending for each registered
    method (and one for the generic handlers), and for every call it accepts
    it waits on all of them again (one ``asyncio.wait``, whose Python work
    is per future): counted under callgrind, ~5,000 instructions a
    registered method a call, ~170,000 a status read with tm's 33 methods,
    against ~700,000 for the whole read. A generic handler costs a
    dictionary lookup a service tried. tm's server and the benchmark's
    baseline both register this way.
    """
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def add_service(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    max_request_bytes: int | None = None,
    interceptors: Sequence[WrappingInterceptor] = (),
) -> list[str]:
    """Registers a servicer through its generated ``add_*_to_server``, with tolerant decoding.

    Each method's handler is registered already wrapped by ``interceptors``
    (the first outermost), as grpc's server would wrap it on every call.

    A body longer than ``max_request_bytes`` is refused with
    ``RESOURCE_EXHAUSTED`` (reason ``QUOTA_EXCEEDED``) before it is decoded.

    Behaviours that check for ``MalformedRequest`` themselves (tm's handler
    wrappers mark theirs with ``checks_malformed``) run as they are; others
    get a guard. Returns the full names of the services registered.
    """
    services = service_handlers(add_to_server, servicer)
    for name, handlers in services:
        tolerant: dict[str, Handler] = {}
        for method, handler in handlers.items():
            deserialize = handler.request_deserializer
            if deserialize is not None:
                handler = handler._replace(
                    request_deserializer=_tolerant(
                        deserialize, _message_type(deserialize), max_request_bytes
                    )
                )
            serialize = handler.response_serializer
            if getattr(_behaviour(handler), "sends_encoded", False) and serialize is not None:
                handler = handler._replace(response_serializer=_passing_bytes(serialize))
            if not getattr(_behaviour(handler), "checks_malformed", False):
                handler = _guard(handler, f"/{name}/{method}")
            tolerant[method] = wrap_handler(interceptors, f"/{name}/{method}", handler)
        register_generic(server, name, tolerant)
    return [name for name, _ in services]
