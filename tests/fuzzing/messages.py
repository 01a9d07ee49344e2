"""What the fuzzer sends: the RPCs, what the run saw of the server, and strategies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from hypothesis import strategies as st

from tm_client.pb import node_pb2, task_manager_pb2, task_manager_test_pb2, task_reporting_pb2

T = TypeVar("T")
K = TypeVar("K")

# Every test here runs a server and a bounded number of examples (a few seconds each).
pytestmark = pytest.mark.timeout(60)

# ---- the RPCs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One method of a tm service, with its message classes."""

    service: str
    name: str
    path: str
    request: type[Message]
    response: type[Message]
    streaming: bool

    def __repr__(self) -> str:
        return f"{self.service}.{self.name}"


def _rpcs() -> dict[str, tuple[Rpc, ...]]:
    """Every method of every tm service, by service name, from the descriptors."""
    out: dict[str, tuple[Rpc, ...]] = {}
    for module in (task_manager_pb2, task_reporting_pb2, node_pb2, task_manager_test_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods = []
            for method in service.methods:
                assert not method.client_streaming, "no tm RPC streams requests"
                methods.append(
                    Rpc(
                        service.name,
                        method.name,
                        f"/{service.full_name}/{method.name}",
                        message_factory.GetMessageClass(method.input_type),
                        message_factory.GetMessageClass(method.output_type),
                        method.server_streaming,
                    )
                )
            out[service.full_name] = tuple(methods)
    return out


RPCS = _rpcs()
ALL_RPCS = tuple(rpc for methods in RPCS.values() for rpc in methods)
# The streams that wait for a change (a client deadline ends them; a module
# watch never ends by itself) and the session stream (read its first message,
# then cancel).
WAITS = {"WaitTask", "WaitLocal", "WatchTasks"}
SESSION = "OpenSession"

#: How long a call may take before the client gives up (a unary call or a
#: finite stream that takes longer has hung); waits end at WAIT_DEADLINE.
CALL_DEADLINE = 3.0
WAIT_DEADLINE = 0.05
#: Messages read of a stream before the client cancels it.
MAX_STREAM_READS = 40


# ---- what the run has seen of the server -----------------------------------------------------

ID_FIELDS = {"id", "task_id", "parent_id"}
POOL_LIMIT = 400


def _add(pool: dict[K, None], value: K) -> None:
    pool.pop(value, None)
    pool[value] = None  # the most recent last
    if len(pool) > POOL_LIMIT:
        del pool[next(iter(pool))]


def _find(message: Message, name: str) -> str:
    """The first non-empty string field called ``name`` in a message, at any depth."""
    for fd, value in message.ListFields():
        if fd.name == name and isinstance(value, str):
            return value
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:
            found = _find(value, name)
            if found:
                return found
    return ""


def _put(message: Message, name: str, value: str) -> bool:
    """Sets the first string field called ``name`` in a message, at any depth."""
    for fd in message.DESCRIPTOR.fields:
        if fd.name == name and fd.type == FieldDescriptor.TYPE_STRING:
            setattr(message, name, value)
            return True
        nested = fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated
        if nested and message.HasField(fd.name) and _put(getattr(message, fd.name), name, value):
            return True
    return False


def _message_of(fd: FieldDescriptor) -> Descriptor:
    """The message a field belongs to."""
    assert fd.containing_type is not None
    return fd.containing_type


@dataclass
class Seen:
    """Ids, sessions, modules and page tokens the run has met, in the order it met them."""

    tasks: dict[str, None] = field(default_factory=dict)
    sessions: dict[str, None] = field(default_factory=dict)
    modules: dict[str, None] = field(default_factory=lambda: dict.fromkeys(["test", "fuzz"]))
    # Page tokens by the listing that issued them: module tasks, or children.
    module_tokens: dict[str, None] = field(default_factory=dict)
    children_tokens: dict[str, None] = field(default_factory=dict)
    # Requests of the next page of a listing, by method (serialized).
    next_pages: dict[str, dict[bytes, None]] = field(default_factory=dict)
    # Ids the server chose for the tasks it created (time-ordered: they tell when).
    server_named: set[UUID] = field(default_factory=set)

    def harvest(self, message: Message, *, request: bool = False) -> None:
        """Remembers the ids, sessions, modules and tokens a message names."""
        for fd, value in message.ListFields():
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                continue
            for item in value if fd.is_repeated else [value]:
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    self.harvest(item, request=request)
                elif fd.type == FieldDescriptor.TYPE_STRING and item:
                    self._note(fd, item, request)

    def _note(self, fd: FieldDescriptor, value: str, request: bool) -> None:
        name = fd.name
        if name in ID_FIELDS and not request and len(value) == 36:
            _add(self.tasks, value)
        elif name == "session_id" and not request:
            _add(self.sessions, value)
        elif name in ("module", "modules") and len(value) <= 256:
            _add(self.modules, value)
        elif name == "next_page_token":
            _add(self.tokens_for(_message_of(fd)), value)

    def follow(self, rpc: Rpc, request: Message, replies: Sequence[Message]) -> None:
        """Keeps the request of a listing's next page, if a reply has a next page token."""
        for reply in replies:
            token = _find(reply, "next_page_token")
            if token:
                follow_up = type(request)()
                follow_up.CopyFrom(request)
                _put(follow_up, "page_token", token)
                _add(self.next_pages.setdefault(rpc.path, {}), follow_up.SerializeToString())

    def tokens_for(self, message: Descriptor) -> dict[str, None]:
        """The tokens of the listing a request or a response message belongs to."""
        listing = message.name.removesuffix("Request").removesuffix("Response")
        return self.module_tokens if listing == "ListModuleTasks" else self.children_tokens

    def forget(self, info: error_details_pb2.ErrorInfo) -> None:
        """Drops an id the server no longer knows (other ids stay, to be refused)."""
        if info.reason == "TASK_NOT_FOUND":
            self.tasks.pop(info.metadata.get("task_id", ""), None)
        elif info.reason == "SESSION_NOT_FOUND":
            self.sessions.pop(info.metadata.get("session_id", ""), None)


# ---- strategies ------------------------------------------------------------------------------


def mix(*parts: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each chosen ``weight`` times as often as a weight of 1."""
    pool = [strategy for weight, strategy in parts for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda s: s)


def pick(pool: dict[str, None], empty: str = "") -> st.SearchStrategy[str]:
    """A value of the pool (``empty`` while it has none), the recent ones favoured.

    The draws do not depend on the pool's size: hypothesis requires that the
    same choices draw the same way in every example, and the pool grows.
    """

    def choose(recent: bool, index: int) -> str:
        items = list(pool)
        if not items:
            return empty
        if recent:  # hypothesis favours small numbers: 0 is the latest
            return items[-1 - index % min(6, len(items))]
        return items[index * 40_503 % len(items)]  # spread the small numbers over the pool

    return st.builds(choose, st.booleans(), st.integers(0, 2**16 - 1))


NIL = "00000000-0000-0000-0000-000000000000"
MAX_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"
FAR_FUTURE = "ffffffff-ffff-7fff-bfff-ffffffffffff"  # a version-7 id of year 10889
ODD_TEXTS = [
    "",
    " ",
    "\x00",
    "none",
    "null",
    "-",
    "0",
    "%%%",
    "\\",
    "a\nb",
    "\u202e",  # right-to-left override
    "e\u0301",  # a combining accent
    "\ufeff",
    "\U0001f600",
    "\uffff",
    "../../etc/passwd",
    "'; DROP TABLE tasks; --",
    "${jndi:ldap://x}",
    "test",
    "fuzz",
]
# Texts at and past the limits: 256 for names, 4096 for entity and error texts.
LONG_TEXTS = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00"]),
    st.sampled_from([255, 256, 257, 4095, 4096, 4097, 6000]),
)
SHORT_TEXTS = st.text(max_size=24)
UUID_TEXTS = st.one_of(
    st.uuids().map(str),
    st.sampled_from([NIL, MAX_UUID, FAR_FUTURE, "01890a5d-ac96-774b-bcce-b302099a8057"]),
)
# Near misses of a UUID that a loose parser would take.
NOT_UUIDS = st.sampled_from(
    [
        "0x" + "a" * 30,
        "+" + "a" * 31,
        "a" * 4 + "_" + "a" * 27,
        "\uff11" * 32,
        "g" * 32,
        "{" + MAX_UUID,
        MAX_UUID[:-1],
        MAX_UUID + "0",
        "urn:uuid:" + MAX_UUID[:-1] + "g",
        MAX_UUID.replace("-", "", 1) + "-",
    ]
)
ANY_TEXT = mix((3, SHORT_TEXTS), (2, st.sampled_from(ODD_TEXTS)), (1, LONG_TEXTS), (1, UUID_TEXTS))


def _forms(value: str) -> st.SearchStrategy[str]:
    """A real id as it is, mostly, or in another form (valid or a near miss)."""
    forms = [
        value.upper(),
        value.replace("-", ""),
        "{" + value + "}",
        "urn:uuid:" + value,
        value[:-1],
        " " + value,
        value[:-1] + "g",
    ]
    return mix((6, st.just(value)), (1, st.sampled_from(forms)))


def hostile_strings(fd: FieldDescriptor, seen: Seen) -> st.SearchStrategy[str]:
    """Strings for a field, by its name: real values in other forms, near misses, junk."""
    name = fd.name
    if name in ID_FIELDS:
        return mix(
            (4, pick(seen.tasks).flatmap(_forms)),
            (2, UUID_TEXTS),
            (1, NOT_UUIDS),
            (1, ANY_TEXT),
        )
    if name == "session_id":
        return mix((2, UUID_TEXTS), (1, pick(seen.tasks)), (1, NOT_UUIDS), (1, ANY_TEXT))
    if name == "page_token":
        tampered = pick(seen.tokens_for(_message_of(fd))).flatmap(
            lambda t: st.sampled_from([t[:-1], t + "A", t[::-1], t.upper(), t[:8]])
        )
        return mix((2, tampered), (1, ANY_TEXT))
    return mix((3, ANY_TEXT), (1, LONG_TEXTS))


def valid_strings(fd: FieldDescriptor, seen: Seen) -> st.SearchStrategy[str]:
    """Strings for a field, by its name, as a well-behaved client sends them."""
    name = fd.name
    if name == "task_id" and _message_of(fd).name.startswith("Create"):
        # A new task's id: the server's, one of the client's own, or a retry's.
        fresh = st.uuids().map(str)
        return mix((5, st.just("")), (2, fresh), (1, pick(seen.tasks, empty=NIL)))
    if name in ID_FIELDS:
        return mix((8, pick(seen.tasks, empty=NIL)), (1, st.just("")), (1, st.uuids().map(str)))
    if name == "session_id":
        return mix((3, pick(seen.sessions)), (2, st.just("")))
    if name == "module":
        return mix((6, pick(seen.modules, empty="fuzz")), (1, st.sampled_from(["m", "other"])))
    if name == "page_token":
        return mix((2, pick(seen.tokens_for(_message_of(fd)))), (1, st.just("")))
    if name == "type":
        return st.sampled_from(["t", "test", "backup"])
    if name in ("scope", "progress_units", "keyspace", "table"):
        return st.sampled_from(["", "test", "ks", "t1"])
    return st.sampled_from(["", "boom", "disk full", "\u00e9t\u00e9"])


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT_EDGES = [0, 1, -1, 2, 3, 100, 999, 1000, 1001, 10**10, 10**10 + 1]
_INT_EDGES += [2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1]
# Values a well-behaved client sends, by field name.
_VALID_INTS = {
    "page_size": [0, 1, 2, 3, 10, 1000],
    "shard": [0, 1, 2],
    "ttl_seconds": [60, 0, 1, 3600, 10**10],
    "user_ttl_seconds": [3600, 0, 1, 10**10],
    "seconds": [0, 0, 1],
    "nanos": [0, 1_000_000, 50_000_000, 999_999_999],
}
# And values just past what is valid.
_NEAR_INTS = {
    "page_size": [1001, -1],
    "shard": [3, 4],
    "ttl_seconds": [10**10 + 1, -1],
    "user_ttl_seconds": [10**10 + 1, -1],
    "seconds": [-1, 315_576_000_001],
    "nanos": [10**9, -1],
}


def integers(fd: FieldDescriptor, hostile: bool) -> st.SearchStrategy[int]:
    """Integers of the field's type: valid ones; or just past them, boundaries, anything."""
    lo, hi = _INT_RANGES[fd.type]
    valid = st.sampled_from([v for v in _VALID_INTS.get(fd.name, [0, 1, 2]) if lo <= v <= hi])
    if not hostile:
        return valid
    near = [v for v in _NEAR_INTS.get(fd.name, [-1, 3]) if lo <= v <= hi] or [hi]
    edges = [v for v in _INT_EDGES if lo <= v <= hi]
    return mix((2, st.sampled_from(near)), (2, st.sampled_from(edges)), (1, st.integers(lo, hi)))


_DOUBLE_EDGES = [-0.0, 1e18, math.nextafter(1e18, math.inf), 1e308, 5e-324, -5e-324, -1.0]
_DOUBLE_EDGES += [math.inf, -math.inf, math.nan]


def doubles(fd: FieldDescriptor, hostile: bool) -> st.SearchStrategy[float]:
    """Doubles (or floats): small ones; or boundaries, non-finite ones, anything."""
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=hostile, allow_infinity=hostile)
    valid = st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0, 100.0, 0.5])
    if not hostile:
        return valid
    return mix((2, st.sampled_from(_DOUBLE_EDGES)), (1, st.floats()))


# Flags a server without a cluster store refuses (hostile when set).
_UNUSUAL_FLAGS = {"cluster", "suspended"}


def scalars(fd: FieldDescriptor, seen: Seen, hostile: bool) -> st.SearchStrategy[Any]:
    """Values for one scalar field."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        return hostile_strings(fd, seen) if hostile else valid_strings(fd, seen)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans() if hostile or fd.name not in _UNUSUAL_FLAGS else st.just(False)
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return doubles(fd, hostile)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        numbers = st.sampled_from([v.number for v in fd.enum_type.values])
        return st.integers(-(2**31), 2**31 - 1) if hostile else numbers
    return integers(fd, hostile)


# Most fields are set, a few are not.
SET_FIELD = st.sampled_from([True] * 9 + [False])
# How hostile a message is: all fields well-behaved, one field hostile, or all of them.
MODES = st.sampled_from(["valid", "one", "valid", "valid", "one", "all"])


@st.composite
def messages(
    draw: st.DrawFn, descriptor: Descriptor, seen: Seen, depth: int = 0, mode: str = ""
) -> Message:
    """A message of ``descriptor``: each field set or not, well-behaved or hostile.

    Most messages are well-behaved but for one field, so that the calls go
    past validation (a message with one bad field in ten is refused at once).
    """
    message = message_factory.GetMessageClass(descriptor)()
    fields = list(descriptor.fields)
    mode = mode or draw(MODES)
    hostile_one = draw(st.integers(0, max(0, len(fields) - 1))) if mode == "one" else -1
    # Of a real oneof (not a proto3 optional's), at most one field is set.
    skipped: set[str] = set()
    for oneof in descriptor.oneofs:
        if len(oneof.fields) > 1:
            chosen = draw(st.sampled_from([None, *oneof.fields]))
            skipped.update(f.name for f in oneof.fields if f is not chosen)
    for i, fd in enumerate(fields):
        if fd.name in skipped or not draw(SET_FIELD):
            continue
        hostile = mode == "all" or i == hostile_one
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            target = getattr(message, fd.name)
            for key in draw(st.lists(scalars(key_fd, seen, hostile), max_size=3)):
                if value_fd.message_type is not None:
                    sub = messages(
                        value_fd.message_type, seen, depth + 1, "all" if hostile else "valid"
                    )
                    target[key].CopyFrom(draw(sub))
                else:
                    target[key] = draw(scalars(value_fd, seen, hostile))
        elif fd.message_type is not None:
            if depth > 3:
                continue
            count = (1, 3) if fd.is_repeated else (1, 1)
            values = draw(
                st.lists(
                    submessages(fd, seen, depth, hostile), min_size=count[0], max_size=count[1]
                )
            )
            if fd.is_repeated:
                for value in values:
                    getattr(message, fd.name).add().CopyFrom(value)
            else:
                getattr(message, fd.name).CopyFrom(values[0])
        elif fd.is_repeated:
            values = draw(st.lists(scalars(fd, seen, hostile), max_size=4))
            getattr(message, fd.name).extend(values)
        else:
            setattr(message, fd.name, draw(scalars(fd, seen, hostile)))
    return message


def submessages(
    fd: FieldDescriptor, seen: Seen, depth: int, hostile: bool
) -> st.SearchStrategy[Message]:
    """A nested message; a hostile Duration or Timestamp is out of range or not normalized."""
    descriptor = fd.message_type
    assert descriptor is not None
    if descriptor.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        cls = message_factory.GetMessageClass(descriptor)
        seconds = integers(descriptor.fields_by_name["seconds"], hostile)
        nanos = integers(descriptor.fields_by_name["nanos"], hostile)
        if hostile:  # one of the two off, or both
            valid_seconds = integers(descriptor.fields_by_name["seconds"], False)
            valid_nanos = integers(descriptor.fields_by_name["nanos"], False)
            pairs = mix(
                (1, st.tuples(seconds, valid_nanos)),
                (1, st.tuples(valid_seconds, nanos)),
                (1, st.tuples(seconds, nanos)),
            )
        else:
            pairs = st.tuples(seconds, nanos)
        return pairs.map(lambda p: cls(seconds=p[0], nanos=p[1]))
    return messages(descriptor, seen, depth + 1, "all" if hostile else "valid")
