"""The health service: grpcio's, with the ``List`` RPC it leaves unimplemented."""

from __future__ import annotations

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

__all__ = ["HealthServicer"]


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpcio's asyncio health servicer, with the ``List`` RPC it leaves unimplemented.

    Left as it is, ``List`` answers with a NotImplementedError, which grpcio
    logs with a traceback for every call.
    """

    async def List(
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        """Returns the serving status of every service the server reports."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )
