"""Query and path values of the HTTP side, read once with the error a person can act on."""

from __future__ import annotations

from uuid import UUID

from aiohttp import web

from tm_server.core import InvalidArgumentError
from tm_server.core.validation import parse_uuid

from .errors import bad_argument

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

#: The longest query value read (a page token, a cursor, a reason are far shorter).
MAX_VALUE_LENGTH = 64 * 1024


def text(request: web.Request, name: str, default: str = "") -> str:
    """A query value as given ("" counts as not given, as in ScyllaDB's newest)."""
    value = request.query.get(name, default)
    if len(value) > MAX_VALUE_LENGTH:
        raise bad_argument(name, f"query parameter {name!r} is longer than {MAX_VALUE_LENGTH}")
    return value


def texts(request: web.Request, name: str) -> list[str]:
    """A repeatable value: ``?state=running&state=done`` or ``?state=running,done``."""
    out: list[str] = []
    for value in request.query.getall(name, []):
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    """A boolean: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, any case)."""
    value = request.query.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise bad_argument(name, f"query parameter {name!r} must be true or false, not {value!r}")


def integer(
    request: web.Request,
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """A whole number, checked against its bounds; ``None`` when absent and not required."""
    value = request.query.get(name)
    if value is None or value == "":
        if required:
            raise bad_argument(name, f"query parameter {name!r} is required")
        return None
    try:
        number = int(value, 10)
    except ValueError:
        raise bad_argument(
            name, f"query parameter {name!r} must be a whole number, not {value[:64]!r}"
        ) from None
    if minimum is not None and number < minimum:
        raise bad_argument(name, f"query parameter {name!r} must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise bad_argument(name, f"query parameter {name!r} must be at most {maximum}")
    return number


def number(request: web.Request, name: str, *, minimum: float = 0.0) -> float | None:
    """A number of seconds (a fraction allowed); ``None`` when absent."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise bad_argument(
            name, f"query parameter {name!r} must be a number, not {value[:64]!r}"
        ) from None
    if not seconds >= minimum or seconds == float("inf"):
        raise bad_argument(name, f"query parameter {name!r} must be a finite number >= {minimum}")
    return seconds


def task_id(request: web.Request, name: str = "task_id") -> UUID:
    """A task id from the path (or the query), as a UUID; 400 when it is not one."""
    value = request.match_info.get(name) or request.query.get(name, "")
    try:
        found = parse_uuid(name, value)
    except InvalidArgumentError as exc:
        raise bad_argument(name, str(exc)) from None
    assert found is not None
    return found


def optional_uuid(request: web.Request, name: str) -> UUID | None:
    """An optional id from the query."""
    value = request.query.get(name, "")
    if not value:
        return None
    try:
        return parse_uuid(name, value)
    except InvalidArgumentError as exc:
        raise bad_argument(name, str(exc)) from None


__all__ = ["flag", "integer", "number", "optional_uuid", "task_id", "text", "texts"]
