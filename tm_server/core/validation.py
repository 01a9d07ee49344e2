"""Every check of an input value, and the limits they enforce, in one place.

Requests reach the core from the service layer (and from embedding code) as
plain values; each is checked here, once, on its way in. A failed check
raises ``InvalidArgumentError`` naming the field, so every caller reports it
the same way. The limits are part of the API: the README's limits table lists
them.
"""

from __future__ import annotations

import math
from binascii import unhexlify
from typing import TYPE_CHECKING
from uuid import UUID, SafeUUID

from .errors import InvalidArgumentError, ValueOutOfRangeError

if TYPE_CHECKING:
    from .types import ListFilter

#: Longest module, type, scope, keyspace, table and progress-unit names accepted.
MAX_NAME_LENGTH = 256
#: Longest entity and error texts accepted.
MAX_TEXT_LENGTH = 4096
#: Largest progress value (completed or total) accepted: an exabyte in bytes.
#: Bounded inputs keep every roll-up finite (it would take 10^290 children to
#: overflow a double), so no status ever carries ``inf`` or ``NaN``.
MAX_PROGRESS = 1e18
#: Largest TTL accepted, in seconds (about 317 years): every expiry time stays
#: far inside what a protobuf Timestamp and a Python datetime can hold.
#: ScyllaDB's own tests set TTLs of 10^9 seconds.
MAX_TTL_SECONDS = 10**10
#: How far ahead of the server's clock a time-based id may claim to have been
#: made and still give its task a ``creation_time`` (hosts' clocks differ).
MAX_ID_CLOCK_SKEW = 86_400.0
#: Entries of a listing page when the request names no size, and the most it may name.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def check_length(field: str, value: str, limit: int) -> str:
    """Returns ``value`` if it is at most ``limit`` characters long.

    Raises:
        InvalidArgumentError: it is longer.
    """
    if len(value) > limit:
        raise InvalidArgumentError(field, f"at most {limit} characters, got {len(value)}")
    return value


def check_name(field: str, value: str) -> str:
    """Checks a required name: not empty and at most ``MAX_NAME_LENGTH`` characters.

    Raises:
        InvalidArgumentError: empty or too long.
    """
    if not value:
        raise InvalidArgumentError(field, "must not be empty")
    return check_length(field, value, MAX_NAME_LENGTH)


#: Types a listing or a watch may filter by at most.
MAX_FILTER_TYPES = 100


def check_filter(flt: ListFilter) -> None:
    """Checks a listing's (or a watch's) filters.

    Raises:
        InvalidArgumentError: a name too long, an empty type, too many types.
    """
    check_length("keyspace", flt.keyspace, MAX_NAME_LENGTH)
    check_length("table", flt.table, MAX_NAME_LENGTH)
    if len(flt.types) > MAX_FILTER_TYPES:
        raise InvalidArgumentError(
            "types", f"at most {MAX_FILTER_TYPES} types, got {len(flt.types)}"
        )
    for name in flt.types:
        check_name("types", name)


def check_progress_value(field: str, value: float) -> float:
    """Checks one progress value: finite, from 0 to ``MAX_PROGRESS``.

    Raises:
        InvalidArgumentError: naming the field.
    """
    if not (0.0 <= value <= MAX_PROGRESS):  # also refuses NaN, which compares false
        cls = ValueOutOfRangeError if value > MAX_PROGRESS else InvalidArgumentError
        raise cls(field, f"must be a finite number from 0 to {MAX_PROGRESS:g}, got {value}")
    return value


def check_progress(completed: float, total: float | None) -> None:
    """Checks a progress report: each value finite and from 0 to ``MAX_PROGRESS``.

    Raises:
        InvalidArgumentError: naming the bad field.
    """
    check_progress_value("completed", completed)
    if total is not None:
        check_progress_value("total", total)


def check_ttl(field: str, seconds: int) -> int:
    """Checks a TTL: from 0 to ``MAX_TTL_SECONDS``.

    Raises:
        InvalidArgumentError: negative or too large.
    """
    if seconds < 0:
        raise InvalidArgumentError(field, f"must not be negative, got {seconds}")
    if seconds > MAX_TTL_SECONDS:
        raise ValueOutOfRangeError(
            field, f"must be at most {MAX_TTL_SECONDS} seconds (about 317 years), got {seconds}"
        )
    return seconds


def check_page_size(page_size: int) -> int:
    """Returns the effective page size: 0 means ``DEFAULT_PAGE_SIZE``.

    Raises:
        InvalidArgumentError: negative or above ``MAX_PAGE_SIZE``.
    """
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            "page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    return page_size


def plausible_time(seconds: float | None, now: float) -> float | None:
    """Returns a time read off a task id if it is plausible, else ``None``.

    Plausible: not before the epoch, at most ``MAX_ID_CLOCK_SKEW`` ahead of ``now``.
    """
    if seconds is None or not (0.0 <= seconds <= now + MAX_ID_CLOCK_SKEW):
        return None
    return seconds


# ---- task ids --------------------------------------------------------------------------------

# Bound once: each lookup below (an Enum member through its metaclass above
# all) costs as much as a step of the parse itself.
_new_object = object.__new__
_set_int = UUID.int.__set__  # type: ignore[attr-defined,misc]
_set_safety = UUID.is_safe.__set__  # type: ignore[attr-defined,misc]
_from_bytes = int.from_bytes
_UNKNOWN_SAFETY = SafeUUID.unknown
_URN = "urn:uuid:"


def _canonical_int(text: str) -> int | None:
    # 8-4-4-4-12 hex digits. unhexlify takes ASCII hex digits only: no sign,
    # "0x", underscore, space or non-ASCII digit that int(text, 16) would take.
    if len(text) != 36 or not (text[8] == text[13] == text[18] == text[23] == "-"):
        return None
    try:
        return _from_bytes(unhexlify(text.replace("-", "")))
    except ValueError:  # binascii.Error is a ValueError
        return None


def _other_form_int(text: str) -> int | None:
    """The number a UUID text spells in the forms beside the canonical one.

    Those are 32 hex digits without hyphens, and the canonical form in braces
    or after ``urn:uuid:``.
    """
    if len(text) == 32:
        try:
            return _from_bytes(unhexlify(text))
        except ValueError:
            return None
    if len(text) == 38 and text[0] == "{" and text[-1] == "}":
        return _canonical_int(text[1:-1])
    if len(text) == 45 and text[:9].lower() == _URN:
        return _canonical_int(text[9:])
    return None


def uuid_from_int(number: int) -> UUID:
    """A UUID of a 128-bit number, made the way ``UUID.__init__`` finishes (a quarter of its cost).

    Through the slots' descriptors: every request carries an id, and
    recovery makes a million.
    """
    uuid: UUID = _new_object(UUID)
    _set_int(uuid, number)
    _set_safety(uuid, _UNKNOWN_SAFETY)
    return uuid


def parse_uuid(field: str, value: str, *, required: bool = True) -> UUID | None:
    """Parses a UUID field strictly: only the forms ``uuid.UUID`` documents.

    Those are ``12345678-1234-5678-1234-567812345678`` (any case), the same in
    braces or after ``urn:uuid:``, and the 32 hex digits without hyphens.
    ``uuid.UUID`` itself takes more (hyphens anywhere, ``0x`` digits that name
    another number, signs, underscores, full-width digits); ids here are
    looked up by their number, so a loose parse would silently name another
    task. The object is made the way ``UUID.__init__`` itself finishes,
    attribute by attribute, which costs a third of calling it: every request
    carries an id (the canonical form is checked inline for the same reason).

    Raises:
        InvalidArgumentError: malformed, or empty when required.
    """
    number: int | None = None
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        # Not contextlib.suppress: every request comes through here.
        try:  # noqa: SIM105
            number = _from_bytes(unhexlify(value.replace("-", "")))
        except ValueError:
            pass
    elif not value:
        if required:
            raise InvalidArgumentError(field, "must not be empty")
        return None
    else:
        number = _other_form_int(value)
    if number is None:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidArgumentError(field, f"not a valid UUID: {shown!r}")
    return uuid_from_int(number)


def require_uuid(field: str, value: str) -> UUID:
    """Parses a required UUID field (see ``parse_uuid``)."""
    parsed = parse_uuid(field, value)
    assert parsed is not None
    return parsed


def finite_or_zero(value: float) -> float:
    """Returns a progress value the core did not check (a virtual group's), made finite.

    ``inf`` and ``NaN`` become 0, so the wire never carries them.
    """
    return value if math.isfinite(value) else 0.0
