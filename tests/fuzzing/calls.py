"""Calling an RPC with a generated request, and what its answer must not be."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import grpc
from google.protobuf.message import Message

from ..error_info import error_info
from .messages import CALL_DEADLINE, ID_FIELDS, MAX_STREAM_READS, SESSION, WAIT_DEADLINE, WAITS, Rpc

# ---- calling ---------------------------------------------------------------------------------

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Outcome:
    """How a call ended: its code and details, what it sent, and whether this client ended it."""

    code: grpc.StatusCode
    details: str
    replies: list[Message]
    error: grpc.RpcError | None = None
    ours: bool = False  # the client's own deadline (a wait) or cancel (a stream read far enough)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def invoke(channel: grpc.Channel, rpc: Rpc, request: Message, metadata: Metadata = ()) -> Outcome:
    """Calls ``rpc``; a stream is read for a bounded number of messages and a short time."""
    if not rpc.streaming:
        unary = channel.unary_unary(
            rpc.path, request_serializer=_serialize, response_deserializer=rpc.response.FromString
        )
        try:
            reply = unary(request, timeout=CALL_DEADLINE, metadata=metadata)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", [], exc)
        return Outcome(grpc.StatusCode.OK, "", [reply])
    waits = rpc.name in WAITS
    limit = 1 if rpc.name == SESSION else MAX_STREAM_READS
    stream = channel.unary_stream(
        rpc.path, request_serializer=_serialize, response_deserializer=rpc.response.FromString
    )
    call: Any = stream(
        request, timeout=WAIT_DEADLINE if waits else CALL_DEADLINE, metadata=metadata
    )
    replies: list[Message] = []
    try:
        for reply in call:
            replies.append(reply)
            if len(replies) >= limit:
                call.cancel()
                return Outcome(grpc.StatusCode.CANCELLED, "", replies, ours=True)
    except grpc.RpcError as exc:
        code = exc.code()
        # A wait's own end (WAIT_TIMEOUT) carries the server's status details; the
        # client's deadline none.
        trailers = cast(grpc.Call, exc).trailing_metadata() or ()
        detailed = any(key == "grpc-status-details-bin" for key, _ in trailers)
        ours = waits and code is grpc.StatusCode.DEADLINE_EXCEEDED and not detailed
        return Outcome(code, exc.details() or "", replies, exc, ours)
    return Outcome(call.code(), call.details() or "", replies)


def describe(message: Message) -> str:
    """A message on one line, long strings cut."""
    parts = []
    for fd, value in message.ListFields():
        items = list(value) if fd.is_repeated else [value]
        shown = []
        for item in items:
            if isinstance(item, Message):
                shown.append("{" + describe(item) + "}")
            elif isinstance(item, str) and len(item) > 48:
                shown.append(f"{item[:40]!r}...({len(item)} chars)")
            else:
                shown.append(repr(item))
        parts.append(f"{fd.name}={', '.join(shown)}")
    return " ".join(parts)


_TIME_RANGE = (-62_135_596_800, 253_402_300_799)  # what a Timestamp may hold


def reply_problems(message: Message, where: str = "") -> list[str]:
    """What no reply may carry: non-finite doubles, invalid times, unset states and kinds."""
    problems: list[str] = []
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        seconds, nanos = getattr(message, "seconds"), getattr(message, "nanos")  # noqa: B009
        if not (_TIME_RANGE[0] <= seconds <= _TIME_RANGE[1] and 0 <= nanos < 10**9):
            problems.append(f"{where}: invalid Timestamp {describe(message)}")
        return problems
    if name.startswith("tm.v1.") and "state" in message.DESCRIPTOR.fields_by_name:
        for enum_field in ("state", "kind"):
            if enum_field in message.DESCRIPTOR.fields_by_name and not getattr(message, enum_field):
                problems.append(f"{where}.{enum_field}: unset")
    for fd, value in message.ListFields():
        for item in value if fd.is_repeated else [value]:
            path = f"{where}.{fd.name}"
            if isinstance(item, Message):
                problems.extend(reply_problems(item, path))
            elif isinstance(item, float) and not math.isfinite(item):
                problems.append(f"{path}: {item}")
            elif fd.name in ID_FIELDS and isinstance(item, str) and item:
                try:
                    UUID(item)
                except ValueError:
                    problems.append(f"{path}: not a UUID: {item!r}")
    return problems


def problems_of(rpc: Rpc, outcome: Outcome) -> list[str]:
    """What is wrong with how a call ended (nothing, for a call this client ended)."""
    problems = [p for reply in outcome.replies for p in reply_problems(reply, rpc.name)]
    if outcome.ours or outcome.code is grpc.StatusCode.OK:
        return problems
    code = outcome.code
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return [*problems, f"{code.name}: {outcome.details}"]
    assert outcome.error is not None
    try:
        info = error_info(outcome.error)
    except ValueError as exc:
        return [*problems, f"{code.name} with a status that does not match it: {exc}"]
    if info is None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        problems.append(f"no answer within {CALL_DEADLINE}s (the call hung)")
    elif info is None or info.domain != "tm" or not info.reason:
        problems.append(f"{code.name} without a tm ErrorInfo: {outcome.details!r} {info}")
    return problems
