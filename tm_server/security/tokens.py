"""The tokens file: bearer tokens (stored hashed) mapped to principals and their roles.

A file, or a directory of ``*.toml`` files, each with entries like::

    [[principal]]
    name = "backup-agent"                 # the principal (also matched by a client certificate)
    roles = ["producer:backup", "reader"]  # ROLE or ROLE:MODULE
    tokens = ["sha256:9f86d0..."]          # SHA-256 of each token; `tm-token new` makes them

Only hashes are stored, so reading the file does not reveal a token. Tokens
are random (32 bytes from ``secrets``), so one unsalted SHA-256 is enough:
no one can guess a preimage, and a check stays a dictionary lookup. A
principal without tokens is one that authenticates with a client
certificate (mTLS) whose identity is its name.

The file is re-read when it changes (checked every second) or on SIGHUP; a
file that no longer parses keeps the last good one in force (and logs why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import secrets
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .roles import Grant, Principal, parse_grant

log = logging.getLogger(__name__)

#: How a token's hash is written in the file.
HASH_PREFIX = "sha256:"


class TokensFileError(Exception):
    """The tokens file cannot be read, or says something that is not allowed."""


def hash_token(token: str) -> str:
    """The file's form of a token: ``sha256:`` and its hex digest."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class AccessList:
    """What the tokens file says: principals by token hash and by name."""

    by_hash: dict[str, Principal]
    by_name: dict[str, Principal]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".toml" and p.is_file())
    return [path]


def _entries(path: Path) -> list[object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise TokensFileError(f"cannot read tokens file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"tokens file {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"principal"}
    if unknown:
        raise TokensFileError(
            f"tokens file {path}: unknown table {sorted(unknown)[0]!r} (expected [[principal]])"
        )
    entries = data.get("principal", [])
    if not isinstance(entries, list):
        raise TokensFileError(f"tokens file {path}: 'principal' must be [[principal]] entries")
    return entries


def _principal(path: Path, index: int, entry: object) -> tuple[Principal, list[str]]:
    where = f"tokens file {path}, principal #{index + 1}"
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected a table")
    unknown = set(entry) - {"name", "roles", "tokens"}
    if unknown:
        raise TokensFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise TokensFileError(f"{where}: 'name' must be a string of 1-256 characters")
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokensFileError(f"{where} ({name}): 'roles' must be a list of strings")
    grants: list[Grant] = []
    for text in roles:
        try:
            grants.append(parse_grant(text))
        except ValueError as exc:
            raise TokensFileError(f"{where} ({name}): {exc}") from None
    hashes = entry.get("tokens", [])
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise TokensFileError(f"{where} ({name}): 'tokens' must be a list of strings")
    for digest in hashes:
        hexpart = digest[len(HASH_PREFIX) :]
        if not digest.startswith(HASH_PREFIX) or len(hexpart) != 64 or not _is_hex(hexpart):
            raise TokensFileError(
                f"{where} ({name}): a token must be given as its hash, 'sha256:' and 64 hex "
                "digits (`tm-token hash` prints it), never as the token itself"
            )
    return Principal(name, tuple(grants)), [h.lower() for h in hashes]


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def load_access(path: Path) -> AccessList:
    """Reads a tokens file or directory.

    Raises:
        TokensFileError: naming the file and the entry at fault.
    """
    by_hash: dict[str, Principal] = {}
    by_name: dict[str, Principal] = {}
    if not path.exists():
        raise TokensFileError(f"tokens file {path} does not exist")
    for file in _files(path):
        for index, entry in enumerate(_entries(file)):
            principal, hashes = _principal(file, index, entry)
            if principal.name in by_name:
                raise TokensFileError(
                    f"tokens file {file}: principal {principal.name!r} is named twice"
                )
            by_name[principal.name] = principal
            for digest in hashes:
                if digest in by_hash:
                    raise TokensFileError(
                        f"tokens file {file}: a token of {principal.name!r} is also "
                        f"{by_hash[digest].name!r}'s"
                    )
                by_hash[digest] = principal
    return AccessList(by_hash, by_name)


class Tokens:
    """The tokens file in force, re-read when it changes.

    ``changed`` callbacks run after each reload that took (the interceptor
    ends the open streams of callers who lost their rights).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.access = load_access(path)
        self._stamp = self._stat()
        self.changed: list[Callable[[], None]] = []

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        try:
            files = _files(self.path)
            stamps = [(str(f), (st := f.stat()).st_mtime_ns, st.st_size) for f in files]
            stamps.append((str(self.path), self.path.stat().st_mtime_ns, 0))
            return tuple(stamps)
        except OSError:
            return ()

    def principal(self, token: str) -> Principal | None:
        """The principal a token names, or ``None`` for a token the file does not hold."""
        # Hashed on each call: the access interceptor keeps the headers it has
        # seen (``service.auth``), so the hot path never comes here.
        return self.access.by_hash.get(hash_token(token))

    def by_name(self, name: str) -> Principal | None:
        """The principal of that name (a client certificate's identity), if the file has it."""
        return self.access.by_name.get(name)

    def check(self) -> bool:
        """Re-reads the file if it changed since the last read; returns whether it took."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        return self.reload(stamp)

    def reload(self, stamp: tuple[tuple[str, int, int], ...] | None = None) -> bool:
        """Re-reads the file now (SIGHUP); a bad file leaves the last good one in force."""
        self._stamp = self._stat() if stamp is None else stamp
        try:
            access = load_access(self.path)
        except TokensFileError as exc:
            log.error("%s; the tokens file read before stays in force", exc)
            return False
        self.access = access
        log.info(
            "tokens file %s reloaded: %d principals, %d tokens",
            self.path,
            len(access.by_name),
            len(access.by_hash),
        )
        for callback in list(self.changed):
            callback()
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """``tm-token``: makes tokens and the entries of the tokens file that name them."""
    parser = argparse.ArgumentParser(
        prog="tm-token", description="Make tokens for tm-server's --tokens file."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="print a new token and its [[principal]] entry")
    new.add_argument("name", help="the principal's name")
    new.add_argument("roles", nargs="+", help="ROLE or ROLE:MODULE (reader, producer, operator, "
                     "test, node)")  # fmt: skip
    sub.add_parser("hash", help="read a token on stdin and print its hash for the file")
    args = parser.parse_args(argv)
    if args.command == "hash":
        token = sys.stdin.readline().strip()
        if not token:
            parser.error("no token on stdin")
        print(hash_token(token))
        return 0
    try:
        grants = [parse_grant(r) for r in args.roles]
    except ValueError as exc:
        parser.error(str(exc))
    token = new_token()
    roles = ", ".join(json.dumps(str(g)) for g in grants)
    # Line 1 is the token (for the client: TM_TOKEN), the rest the file's entry,
    # so a script can split them; JSON strings are valid TOML basic strings.
    print(token)
    print("# the token above is for the client only; this entry goes in the tokens file:")
    print(f"[[principal]]\nname = {json.dumps(args.name)}\nroles = [{roles}]")
    print(f'tokens = ["{hash_token(token)}"]')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
