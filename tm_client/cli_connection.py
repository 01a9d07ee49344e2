"""Where and how the ``tm`` command line reaches its server, and how it words failures."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ._client import TaskManagerClient
from ._credentials import (
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    Credentials,
    check_token,
    read_token_file,
)
from ._errors import (
    CursorExpiredError,
    PermissionDeniedError,
    TmError,
    UnauthenticatedError,
    UnavailableError,
    WatchFellBehindError,
)


def target_of(args: argparse.Namespace) -> str:
    """The server's address: ``--target``, or ``--host:--port``."""
    return str(args.target) if args.target else f"{args.host}:{args.port}"


@dataclass(frozen=True)
class ConnectionOptions:
    """Where and how to reach the server: the target, TLS and the token."""

    target: str
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ
    ) -> ConnectionOptions:
        """Builds the options from the flags, and from the environment for those not given.

        The target is ``--target`` or ``--host``/``--port``; the credentials
        are ``Credentials.from_env`` with each ``--token``/``--tls-*`` flag
        given in place of its variable.

        Raises:
            ValueError: the credentials do not go together, or a file cannot be read.
        """
        if args.token is not None and args.token_file is not None:
            raise ValueError("give --token or --token-file, not both")
        token: str | None = None
        if args.token is not None:
            check_token(args.token, "--token")
            token = args.token
        elif args.token_file is not None:
            token = read_token_file(args.token_file, "--token-file")
        if token is not None:
            # A token flag replaces the environment's token altogether: a
            # TM_TOKEN_FILE that cannot be read must not stop it.
            environ = {k: v for k, v in environ.items() if k not in (ENV_TOKEN, ENV_TOKEN_FILE)}
        flags = Credentials(
            token=token,
            ca=args.tls_ca,
            cert=args.tls_cert,
            key=args.tls_key,
            server_name=args.tls_server_name,
            tls=bool(args.tls),
        )
        credentials = Credentials.from_env(environ).merged(flags)
        credentials.check()
        return cls(target_of(args), credentials)

    def client(self, channel: grpc.Channel | None = None) -> TaskManagerClient:
        """Opens a client with these options (on ``channel``, as it is, if one is given)."""
        if channel is None:
            channel = self.credentials.channel(self.target)
        return TaskManagerClient(channel=channel, timeout=30.0)


def credential_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """Adds the TLS and token flags; ``default`` is what each takes when not given."""
    parser.add_argument(
        "--token",
        default=default,
        help=f"bearer token sent on every call (default ${ENV_TOKEN}); "
        "a command line is visible to other users: prefer --token-file",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default,
        metavar="FILE",
        help=f"file whose first line is the bearer token (default ${ENV_TOKEN_FILE})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="use TLS, trusting the system's CAs (default $TM_TLS); --tls-ca, "
        "--tls-cert and --tls-key turn it on too",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM file of the CA to trust for the server's certificate (default $TM_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM client certificate, for mutual TLS (default $TM_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM private key of --tls-cert (default $TM_TLS_KEY)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=default,
        metavar="NAME",
        help="name to check the server's certificate for, in place of the host "
        "(default $TM_TLS_SERVER_NAME)",
    )


#: What grpc says when TLS does not come together, and what to do about it.
_TLS_HINTS = (
    ("WRONG_VERSION_NUMBER", "the server does not seem to use TLS: try without --tls and --tls-ca"),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not signed by a CA trusted here: give its CA with --tls-ca",
    ),
    (
        "Hostname Verification Check failed",
        "the server's certificate does not name the host: see --tls-server-name",
    ),
    (
        "Socket closed",
        "if the server wants TLS, or a client certificate: see --tls-ca, --tls-cert and --tls-key",
    ),
)


def message(exc: TmError, args: argparse.Namespace) -> str:
    """The one line that says what failed, for stderr; with a hint where one helps."""
    if isinstance(exc, UnavailableError):
        message = f"cannot reach the tm server at {target_of(args)}: {exc.message}"
        hint = next((h for marker, h in _TLS_HINTS if marker in exc.message), None)
        return message if hint is None else f"{message} ({hint})"
    if isinstance(exc, UnauthenticatedError):
        return (
            f"not authenticated by the tm server at {target_of(args)}: {exc.message} "
            "(give a token with --token-file, --token, $TM_TOKEN_FILE or $TM_TOKEN, "
            "or a client certificate with --tls-cert and --tls-key)"
        )
    if isinstance(exc, PermissionDeniedError):
        message = exc.message
        role = exc.metadata.get("role", "")
        if role and role not in message:
            message += f" (it needs role {role})"
        return f"permission denied by the tm server at {target_of(args)}: {message}"
    if isinstance(exc, CursorExpiredError):
        return f"{exc.message} (watch again with a snapshot: without --cursor)"
    if isinstance(exc, WatchFellBehindError):
        return f"{exc.message} (watch again with a snapshot, and read faster)"
    return exc.message
