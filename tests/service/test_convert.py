"""Request-field parsing in the conversion module: the fast id parse agrees with ``uuid.UUID``."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from tm_server.core import InvalidArgumentError
from tm_server.service.convert import parse_uuid, require_uuid

_ID = uuid4()


@pytest.mark.parametrize(
    "text",
    [
        str(_ID),
        str(_ID).upper(),
        _ID.hex,
        "{" + str(_ID) + "}",
        "urn:uuid:" + str(_ID),
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ],
)
def test_accepted_ids_parse_as_uuid_does(text: str) -> None:
    parsed = require_uuid("task_id", text)
    expected = UUID(text)
    assert parsed == expected and parsed.int == expected.int
    assert str(parsed) == str(expected) and hash(parsed) == hash(expected)
    assert parsed.is_safe == expected.is_safe and parsed.version == expected.version
    with pytest.raises(TypeError):
        parsed.int = 0  # type: ignore[misc]  # as immutable as any UUID


@pytest.mark.parametrize(
    "text",
    [
        "not-a-uuid",
        _ID.hex[:31],
        _ID.hex + "0",
        "g" + _ID.hex[1:],
        "-" + _ID.hex[1:],  # 31 digits once the hyphen is gone
        str(_ID)[:-1] + "-",
    ],
)
def test_malformed_ids_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValueError):
        UUID(text)
    with pytest.raises(InvalidArgumentError) as err:
        parse_uuid("parent_id", text)
    assert err.value.field == "parent_id" and "not a valid UUID" in err.value.description


def test_empty_id_is_refused_only_when_required() -> None:
    assert parse_uuid("parent_id", "", required=False) is None
    with pytest.raises(InvalidArgumentError) as err:
        require_uuid("task_id", "")
    assert err.value.field == "task_id" and "must not be empty" in err.value.description


def _dashed(digits: str) -> str:
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


@pytest.mark.parametrize(
    "text",
    [
        "0x" + _ID.hex[2:],  # int() reads this as another number
        _dashed("0x" + _ID.hex[2:]),
        "+" + _ID.hex[1:],
        _dashed("+" + _ID.hex[1:]),
        _ID.hex[:4] + "_" + _ID.hex[5:],
        " " + _ID.hex[1:],
        _ID.hex[:31] + " ",
        _dashed(_ID.hex[:31] + "\n"),
        _dashed("\uff11" * 32),  # full-width digits
        "\uff11" * 32,
        _ID.hex[:4] + "-" + _ID.hex[4:8] + "-" + _ID.hex[8:],  # hyphens in other places
        "{" + _ID.hex + "}",
        "{" + str(_ID),
        "urn:uuid:" + _ID.hex,
        "uuid:" + str(_ID),
    ],
)
def test_forms_uuid_takes_beyond_its_documented_ones_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_uuid("task_id", text)
    assert err.value.field == "task_id" and "not a valid UUID" in err.value.description
