"""Opaque page tokens for task listings: where the previous page stopped, bound to its query."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from uuid import UUID

from .errors import InvalidArgumentError
from .types import ListFilter

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

PHASE_REGULAR = 0
PHASE_VIRTUAL = 1


@dataclass(frozen=True, slots=True)
class PagePosition:
    """The last entry a page returned: its shard, its phase and its task id."""

    shard: int
    phase: int
    after: UUID


def _query_digest(module: str, flt: ListFilter) -> str:
    key = json.dumps([module, flt.internal, flt.keyspace, flt.table])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_token(module: str, flt: ListFilter, pos: PagePosition) -> str:
    """Encodes a position as an opaque, URL-safe token."""
    body = {"s": pos.shard, "p": pos.phase, "a": pos.after.hex, "q": _query_digest(module, flt)}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def decode_token(token: str, module: str, flt: ListFilter, shards: int) -> PagePosition | None:
    """Decodes a token made by ``encode_token`` for the same query; ``""`` means the first page.

    Raises:
        InvalidArgumentError: the token is malformed or belongs to another query.
    """
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        pos = PagePosition(int(body["s"]), int(body["p"]), UUID(hex=str(body["a"])))
        digest = str(body["q"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
        raise InvalidArgumentError("page_token", "malformed page token") from exc
    if digest != _query_digest(module, flt):
        raise InvalidArgumentError(
            "page_token", "the token belongs to a listing with another module or filters"
        )
    if not 0 <= pos.shard < shards or pos.phase not in (PHASE_REGULAR, PHASE_VIRTUAL):
        raise InvalidArgumentError("page_token", "malformed page token")
    return pos


def check_page_size(page_size: int) -> int:
    """Returns the effective page size: 0 means the default.

    Raises:
        InvalidArgumentError: negative or above the maximum.
    """
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            "page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    return page_size
