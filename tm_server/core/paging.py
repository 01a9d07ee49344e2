"""Opaque page tokens for listings: where the previous page stopped, bound to its query, signed.

A token is a small binary record (the position and a digest of the query)
followed by an HMAC of it under a key that only this server holds, all in
URL-safe base64. The server checks the MAC before it reads anything else, so
it never parses bytes it did not write: a token that was edited, made up, or
issued by another server (or by this one before a restart) is refused as
``INVALID_ARGUMENT`` with reason ``INVALID_PAGE_TOKEN``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass
from uuid import UUID

from .errors import InvalidPageTokenError
from .types import ListFilter, TaskStats

#: A listing page's entries stop before their encoding would pass this many
#: bytes: half of the 4 MiB a default gRPC client accepts.
PAGE_BYTES = 2 * 1024 * 1024
# Per entry beyond its strings: the id, enums, numbers, three timestamps, tags.
_ENTRY_OVERHEAD = 128

PHASE_REGULAR = 0
PHASE_VIRTUAL = 1

_VERSION = 1
# version, shard, phase, the last entry's id, the query digest
_RECORD = struct.Struct(">BHB16s8s")
_MAC_BYTES = 16
_TOKEN_BYTES = _RECORD.size + _MAC_BYTES
# Longer texts cannot be a token: refused before any decoding work.
_MAX_TOKEN_CHARS = 4 * ((_TOKEN_BYTES + 2) // 3)


@dataclass(frozen=True, slots=True)
class PagePosition:
    """The last entry a page returned: its shard, its phase and its id."""

    shard: int
    phase: int
    after: UUID


def _query_digest(scope: str, flt: ListFilter | None) -> bytes:
    key: list[object] = [scope]
    if flt is not None:
        key += [flt.internal, flt.keyspace, flt.table]
        if flt.states or flt.types:
            key += [sorted(s.value for s in flt.states), sorted(flt.types)]
    return hashlib.sha256(json.dumps(key).encode()).digest()[:8]


def _utf8_len(text: str) -> int:
    # isascii() reads a flag: most names cost no encoding to measure.
    return len(text) if text.isascii() else len(text.encode())


def entry_bytes(stats: TaskStats) -> int:
    """An upper bound of a list entry's encoded size."""
    return _ENTRY_OVERHEAD + (
        _utf8_len(stats.type)
        + _utf8_len(stats.scope)
        + _utf8_len(stats.keyspace)
        + _utf8_len(stats.table)
        + _utf8_len(stats.entity)
    )


class PageTokens:
    """Makes and checks page tokens under a per-process secret key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, record: bytes) -> bytes:
        return hmac.new(self._key, record, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: str, flt: ListFilter | None, pos: PagePosition) -> str:
        """Returns the token of the page after ``pos`` of the listing ``scope`` (and ``flt``)."""
        record = _RECORD.pack(
            _VERSION, pos.shard, pos.phase, pos.after.bytes, _query_digest(scope, flt)
        )
        return base64.urlsafe_b64encode(record + self._mac(record)).decode("ascii")

    def decode(
        self, token: str, scope: str, flt: ListFilter | None, shards: int
    ) -> PagePosition | None:
        """Checks and decodes a token made by ``encode`` for the same listing; ``""`` is the start.

        Raises:
            InvalidPageTokenError: the token was not made by this server, or
                belongs to another listing (module or filters).
        """
        if not token:
            return None
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidPageTokenError("not a page token this server issued")
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise InvalidPageTokenError("not a page token this server issued") from exc
        record, mac = raw[: _RECORD.size], raw[_RECORD.size :]
        if len(raw) != _TOKEN_BYTES or not hmac.compare_digest(mac, self._mac(record)):
            raise InvalidPageTokenError(
                "not a page token this server issued (it may have restarted since): "
                "list again from the first page"
            )
        version, shard, phase, after, digest = _RECORD.unpack(record)
        if version != _VERSION or not 0 <= shard < shards:
            raise InvalidPageTokenError("not a page token this server issued")
        if phase not in (PHASE_REGULAR, PHASE_VIRTUAL):
            raise InvalidPageTokenError("not a page token this server issued")
        if digest != _query_digest(scope, flt):
            raise InvalidPageTokenError(
                "the token belongs to a listing with another module or filters"
            )
        return PagePosition(shard, phase, UUID(bytes=after))
