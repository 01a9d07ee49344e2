"""Roles, grants and principals: who a caller is and what it may do (plain data, no gRPC).

Roles rank ``reader`` < ``producer`` < ``operator``: each may do what the
one before it may, and more. ``test`` (the test service) and ``node`` (the
calls nodes of a cluster make to each other) stand apart: they grant only
their own calls. A grant may be limited to modules ("producer:backup").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tm_server.core.validation import MAX_NAME_LENGTH


class Role(enum.Enum):
    """What a principal may do."""

    #: Sees modules, lists, statuses, waits, watches, TTLs and nodes.
    READER = "reader"
    #: Also creates and reports tasks, and opens producer sessions.
    PRODUCER = "producer"
    #: Also aborts, sets TTLs, drains and unregisters modules; drives any task.
    OPERATOR = "operator"
    #: The test service (``--enable-test-service``).
    TEST = "test"
    #: Calls between the nodes of a cluster.
    NODE = "node"


# What each role includes (itself among them).
_INCLUDES: dict[Role, frozenset[Role]] = {
    Role.READER: frozenset({Role.READER}),
    Role.PRODUCER: frozenset({Role.READER, Role.PRODUCER}),
    Role.OPERATOR: frozenset({Role.READER, Role.PRODUCER, Role.OPERATOR}),
    Role.TEST: frozenset({Role.TEST}),
    Role.NODE: frozenset({Role.NODE}),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """One role, on every module (``module`` ``None``) or on one."""

    role: Role
    module: str | None = None

    def __str__(self) -> str:
        return self.role.value if self.module is None else f"{self.role.value}:{self.module}"


def parse_grant(text: str) -> Grant:
    """Reads "ROLE" or "ROLE:MODULE".

    Raises:
        ValueError: an unknown role, or an empty or overlong module name.
    """
    name, sep, module = text.partition(":")
    try:
        role = Role(name.strip())
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {name.strip()!r} (known: {known})") from None
    if not sep:
        return Grant(role)
    if not module or len(module) > MAX_NAME_LENGTH:
        raise ValueError(f"role {text!r}: the module after ':' must be 1-{MAX_NAME_LENGTH} chars")
    if role in (Role.TEST, Role.NODE):
        raise ValueError(f"role {text!r}: the {role.value} role is not limited to modules")
    return Grant(role, module)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name and what it was granted.

    The grants are folded into sets of role names once, at construction: a
    check on every call is then a string lookup or two (an Enum member
    hashes in Python, a string in C).
    """

    name: str
    grants: tuple[Grant, ...]
    _everywhere: frozenset[str] = field(init=False, repr=False, compare=False)
    _somewhere: frozenset[str] = field(init=False, repr=False, compare=False)
    _on: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        everywhere: set[str] = set()
        on: dict[str, set[str]] = {}
        for grant in self.grants:
            names = {r._value_ for r in _INCLUDES[grant.role]}
            if grant.module is None:
                everywhere |= names
            else:
                on.setdefault(grant.module, set()).update(names)
        object.__setattr__(self, "_everywhere", frozenset(everywhere))
        object.__setattr__(self, "_somewhere", frozenset(everywhere.union(*on.values())))
        object.__setattr__(self, "_on", {m: frozenset(n | everywhere) for m, n in on.items()})

    def allows(self, role: Role, module: str | None = None) -> bool:
        """Whether the principal has ``role`` on ``module`` (``None``: on every module)."""
        name = role._value_
        if name in self._everywhere:
            return True
        if module is None:
            return False
        names = self._on.get(module)
        return names is not None and name in names

    def allows_somewhere(self, role: Role) -> bool:
        """Whether the principal has ``role`` on at least one module."""
        return role._value_ in self._somewhere

    def describe(self) -> str:
        """The grants as the tokens file writes them."""
        return ", ".join(str(g) for g in self.grants) or "no roles"


__all__ = ["Grant", "Principal", "Role", "parse_grant"]
