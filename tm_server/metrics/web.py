"""The HTTP side's request metrics: one aiohttp middleware, as the RPCs have one interceptor.

Requests are counted by route template (``/task_manager/task_status/{task_id}``,
never the path itself, so the label values stay bounded), method and the
status code answered, and timed; an event stream is counted when it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .registry import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_middleware(
    metrics: Metrics,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware that counts and times every request of the HTTP side."""
    requests = metrics.http_requests
    duration = metrics.http_duration

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:
            code = 499  # the client went away (nginx's code for it)
            raise
        finally:
            info = request.match_info
            route = getattr(getattr(info.route, "resource", None), "canonical", None)
            label = route if route is not None and info.http_exception is None else "unmatched"
            requests.labels(label, request.method, str(code)).inc()
            duration.labels(label, request.method).observe(time.perf_counter() - started)

    return count


__all__ = ["metrics_middleware"]
