"""The ErrorInfo a failed call carried (tests read reasons and metadata off real calls)."""

from __future__ import annotations

from typing import Any

from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_info(call: Any) -> error_details_pb2.ErrorInfo | None:
    """The call's google.rpc ErrorInfo, or ``None`` when its status carries none."""
    status = rpc_status.from_call(call)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def reason_of(call: Any) -> str:
    """The ErrorInfo's reason ("" without one)."""
    info = error_info(call)
    return "" if info is None else str(info.reason)


def metadata_of(call: Any) -> dict[str, str]:
    """The ErrorInfo's metadata ({} without one)."""
    info = error_info(call)
    return {} if info is None else dict(info.metadata)
