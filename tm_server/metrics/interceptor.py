"""The metrics interceptor: every RPC counted by method and final status code, and timed.

It is the outermost interceptor, so a call the access checks refuse is
counted with its code too. Each method's handler is wrapped once, and its
labelled children are bound at its first call (the server wraps every
method as it starts; one never called shows no series): a call costs a
clock read at each end, one counter increment and one histogram observation. A streaming call is
counted when it ends, with the code it ended with (``CANCELLED`` when the
client went away), and is in the open-streams gauge meanwhile. Only methods
the server serves get series (an unknown method has no handler), so the
label values stay bounded. The series are ``series``' loop-local ones: the
count and the observation take no lock. Without ``--metrics-address`` it is not installed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tm_server.service.calls import WrappingInterceptor, final_code, split_method

from .registry import Metrics
from .series import Value

_OK = grpc.StatusCode.OK


class _Method:
    """One method's bound children: calls by code, latency, open streams."""

    __slots__ = ("_handled", "_labels", "_metrics", "duration", "handled", "ok")

    def __init__(self, metrics: Metrics, method: str) -> None:
        service, name = split_method(method)
        self._metrics = metrics
        self._labels = (service, name)
        self.handled = metrics.rpc_handled
        self._handled: dict[grpc.StatusCode, Value] = {}
        self.ok = self.child(_OK)
        self.duration = metrics.rpc_duration.labels(service, name)

    def streams(self) -> Value:
        """The gauge of this (streaming) method's open calls."""
        return self._metrics.rpc_streams_open.labels(*self._labels)

    def child(self, code: grpc.StatusCode) -> Value:
        """The counter of calls that ended with ``code``."""
        found = self._handled.get(code)
        if found is None:
            found = self._handled[code] = self.handled.labels(*self._labels, code.name)
        return found


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every RPC the server serves."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def _wrap(self, method: str, handler: Any) -> Any:
        def series() -> _Method:
            return _Method(self._metrics, method)

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(series, handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_unary(series, handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_stream(series, handler.unary_stream))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_stream(series, handler.stream_stream))
        return handler


def _unary(make: Callable[[], _Method], inner: Any) -> Callable[[Any, Any], Awaitable[Any]]:
    clock = time.perf_counter
    series: _Method | None = None

    async def unary(request: Any, context: Any) -> Any:
        nonlocal series
        if series is None:
            series = make()
        started = clock()
        try:
            reply = await inner(request, context)
        except BaseException as exc:
            series.child(final_code(context, exc)).inc()
            series.duration.observe(clock() - started)
            raise
        if context.code() is None:
            series.ok.inc()
        else:
            series.child(final_code(context)).inc()
        series.duration.observe(clock() - started)
        return reply

    return unary


def _stream(make: Callable[[], _Method], inner: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
    clock = time.perf_counter
    series: _Method | None = None
    streams: Value | None = None

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        nonlocal series, streams
        if series is None or streams is None:
            series = make()
            streams = series.streams()
        started = clock()
        streams.inc()
        code = _OK
        try:
            async for item in inner(request, context):
                yield item
            code = final_code(context)
        except BaseException as exc:
            code = final_code(context, exc)
            raise
        finally:
            streams.dec()
            series.child(code).inc()
            series.duration.observe(clock() - started)

    return stream


__all__ = ["MetricsInterceptor"]
