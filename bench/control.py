"""A JSON control channel for benchmark servers, served beside the real services."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
SERVICE = "bench.Control"


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def _load(data: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def handler(methods: dict[str, Handler]) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler serving ``/bench.Control/<name>`` with JSON in and out."""

    def wrap(fn: Handler) -> Callable[[dict[str, Any], Any], Awaitable[dict[str, Any]]]:
        async def call(request: dict[str, Any], context: Any) -> dict[str, Any]:
            return await fn(request)

        return call

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                wrap(fn), request_deserializer=_load, response_serializer=_dump
            )
            for name, fn in methods.items()
        },
    )


def call(target: str, name: str, timeout: float = 600, **request: Any) -> dict[str, Any]:
    """Calls a control method (blocking)."""
    with grpc.insecure_channel(target) as channel:
        method = channel.unary_unary(
            f"/{SERVICE}/{name}", request_serializer=_dump, response_deserializer=_load
        )
        result: dict[str, Any] = method(request, timeout=timeout)
        return result
