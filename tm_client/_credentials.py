"""How a client reaches a tm server that checks its callers: TLS, mutual TLS, a bearer token."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

#: The environment variables ``Credentials.from_env`` reads.
ENV_TOKEN = "TM_TOKEN"
ENV_TOKEN_FILE = "TM_TOKEN_FILE"
ENV_TLS = "TM_TLS"
ENV_TLS_CA = "TM_TLS_CA"
ENV_TLS_CERT = "TM_TLS_CERT"
ENV_TLS_KEY = "TM_TLS_KEY"
ENV_TLS_SERVER_NAME = "TM_TLS_SERVER_NAME"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

#: What each PEM file must hold, by the ``Credentials`` field that names it.
_PEM_KINDS = {
    "ca": ("TLS CA certificate", "CERTIFICATE-----", "--tls-ca or TM_TLS_CA"),
    "cert": ("TLS client certificate", "CERTIFICATE-----", "--tls-cert or TM_TLS_CERT"),
    "key": ("TLS client key", "PRIVATE KEY-----", "--tls-key or TM_TLS_KEY"),
}

_Options = Sequence[tuple[str, Any]]
_Metadata = list[tuple[str, str | bytes]]


def check_token(token: str, source: str = "the token") -> None:
    """Raises ``ValueError`` unless ``token`` can travel as an HTTP/2 header value.

    The message never holds the token itself: it is a secret, and error lines
    end up in logs.

    Args:
        token: the bearer token.
        source: where it came from, for the message (``"TM_TOKEN"``, a file's name).
    """
    if not token:
        raise ValueError(f"{source} is empty")
    if token.lower().startswith("bearer "):
        raise ValueError(f"{source} starts with 'Bearer ': give the token alone, without it")
    for i, char in enumerate(token):
        if char.isspace():
            what = "a line break" if char in "\r\n" else "whitespace"
            raise ValueError(f"{source} has {what} at character {i + 1}: a token is one word")
        if not "\x21" <= char <= "\x7e":
            raise ValueError(
                f"{source} has a character that is not printable ASCII at character {i + 1}"
            )


def read_token_file(path: Path, source: str = "the token file") -> str:
    """Returns the token a file holds on its first line (surrounding blanks dropped).

    Raises:
        ValueError: the file cannot be read, or its first line is no token.
    """
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path} ({source}): {_why(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"the token file {path} ({source}) is not UTF-8 text") from exc
    token = line.strip()
    if not token:
        raise ValueError(f"the token file {path} ({source}) has no token on its first line")
    check_token(token, f"the token in {path}")
    return token


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _env_bool(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be 1/true or 0/false, not {environ[name]!r}")


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    # An empty variable counts as unset: `TM_TLS_CA= tm ...` turns one off.
    value = environ.get(name, "")
    return Path(value) if value else None


#: The options of every channel tm_client opens (options given by the caller win).
#:
#: A lost connection is tried again from 0.5 s, at most 2 s apart. gRPC's own
#: backoff grows to 120 s and is shared by every channel of the process to one
#: address, so after an outage of a minute clients went on failing for half a
#: minute more once tm was back, long enough for a producer's finish to give up
#: and its session's lease to run out.
#:
#: While a call is open, a connection silent for 20 s is pinged, and one whose
#: ping goes unanswered for 10 s is closed: a tm that froze, or a network that
#: drops packets without a word, otherwise leaves a producer's session stream
#: and a wait without a timeout hanging for as long as the kernel keeps the
#: connection (hours). tm servers take pings 5 s apart and more; without data
#: on the connection gRPC would stop after two pings (max_pings_without_data).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


def _with_defaults(options: list[Any]) -> list[Any]:
    given = {name for name, _ in options}
    return [*(o for o in CHANNEL_OPTIONS if o[0] not in given), *options]


@dataclass(frozen=True, repr=False)
class Credentials:
    """How to reach a tm server that checks its callers.

    Build one from the environment with ``from_env`` (what every client does
    when given neither ``channel`` nor ``credentials``), or directly; then
    ``channel()`` or ``aio_channel()`` opens a channel that uses it.

    Attributes:
        token: the bearer token sent on every call as ``authorization: Bearer
            <token>``, over TLS or not (a server takes tokens on plaintext
            only from loopback); ``None`` sends none.
        ca: the PEM file of the CA(s) to trust for the server's certificate;
            ``None`` with ``tls`` trusts the system's roots.
        cert: the PEM client certificate (chain) for mutual TLS; needs ``key``.
        key: the PEM private key of ``cert``.
        server_name: the name to check the server's certificate for, in place
            of the target's host (``grpc.ssl_target_name_override``): to reach
            a node by address whose certificate names it otherwise.
        tls: whether to use TLS; set by itself when any of ``ca``, ``cert`` or
            ``key`` is given.

    Example:
        >>> creds = Credentials(token="s3cret", ca=Path("ca.pem"))
        >>> with TaskManagerClient("tm.example:50051", credentials=creds) as tm:
        ...     tm.list_modules()
    """

    token: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    tls: bool = False

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))  # a str path works too
        if self.token is not None:
            check_token(self.token)
        if not self.tls and (self.ca or self.cert or self.key):
            object.__setattr__(self, "tls", True)

    def __repr__(self) -> str:
        # The token is a secret: a repr lands in logs and tracebacks.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.token is not None:
            shown["token"] = "<hidden>"
        return "Credentials(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        """Reads the credentials an operator set in the environment.

        ``TM_TOKEN`` is the token, or else ``TM_TOKEN_FILE`` names a file
        whose first line is (``TM_TOKEN`` wins when both are set). ``TM_TLS``
        (``1``/``true``) turns TLS on with the system's roots; ``TM_TLS_CA``,
        ``TM_TLS_CERT`` and ``TM_TLS_KEY`` name PEM files (and turn TLS on);
        ``TM_TLS_SERVER_NAME`` overrides the name checked in the server's
        certificate. An empty variable counts as unset.

        Raises:
            ValueError: a variable is malformed, or the token file cannot be read.
        """
        token: str | None = environ.get(ENV_TOKEN) or None
        if token is not None:
            check_token(token, ENV_TOKEN)
        else:
            token_file = _env_path(environ, ENV_TOKEN_FILE)
            if token_file is not None:
                token = read_token_file(token_file, ENV_TOKEN_FILE)
        return cls(
            token=token,
            ca=_env_path(environ, ENV_TLS_CA),
            cert=_env_path(environ, ENV_TLS_CERT),
            key=_env_path(environ, ENV_TLS_KEY),
            server_name=environ.get(ENV_TLS_SERVER_NAME) or None,
            tls=_env_bool(environ, ENV_TLS),
        )

    def merged(self, other: Credentials) -> Credentials:
        """These credentials with each setting ``other`` gives in place of this one's.

        For flags over the environment: ``Credentials.from_env().merged(flags)``.
        A field ``other`` leaves ``None`` keeps this one's value, and TLS is on
        if either turns it on.
        """
        return Credentials(
            token=other.token if other.token is not None else self.token,
            ca=other.ca if other.ca is not None else self.ca,
            cert=other.cert if other.cert is not None else self.cert,
            key=other.key if other.key is not None else self.key,
            server_name=other.server_name if other.server_name is not None else self.server_name,
            tls=self.tls or other.tls,
        )

    def check(self) -> None:
        """Checks that the settings go together and that the PEM files can be read.

        ``channel()`` and ``aio_channel()`` check first; call it to fail early.

        Raises:
            ValueError: what is wrong, and what to do about it.
        """
        self._ssl_credentials()
        self._options()

    def channel(self, target: str, options: _Options = ()) -> grpc.Channel:
        """Opens a blocking channel to ``target`` with these credentials.

        Args:
            target: ``host:port`` (or any gRPC target).
            options: further gRPC channel options.

        Raises:
            ValueError: see ``check``.
        """
        ssl = self._ssl_credentials()
        all_options = _with_defaults([*options, *self._options()])
        if ssl is None:
            channel = grpc.insecure_channel(target, options=all_options)
        else:
            channel = grpc.secure_channel(target, ssl, options=all_options)
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, _TokenInterceptor(self.token))

    def aio_channel(self, target: str, options: _Options = ()) -> grpc.aio.Channel:
        """Opens an asyncio channel to ``target`` with these credentials.

        Args:
            target: ``host:port`` (or any gRPC target).
            options: further gRPC channel options.

        Raises:
            ValueError: see ``check``.
        """
        ssl = self._ssl_credentials()
        all_options = _with_defaults([*options, *self._options()])
        interceptors = None if self.token is None else _aio_token_interceptors(self.token)
        if ssl is None:
            return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, ssl, options=all_options, interceptors=interceptors)

    def _options(self) -> _Options:
        if self.server_name is None:
            return ()
        if not self.tls:
            raise ValueError(
                f"a TLS server name ({self.server_name}) is set but TLS is off: "
                "turn TLS on (--tls, TM_TLS=1, or a CA) or drop the name "
                "(--tls-server-name, TM_TLS_SERVER_NAME)"
            )
        return (("grpc.ssl_target_name_override", self.server_name),)

    def _ssl_credentials(self) -> grpc.ChannelCredentials | None:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(
                f"the {_PEM_KINDS[given][0]} {getattr(self, given)} needs the "
                f"{_PEM_KINDS[missing][0]} too (give it with {_PEM_KINDS[missing][2]})"
            )
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self._pem("ca"),
            private_key=self._pem("key"),
            certificate_chain=self._pem("cert"),
        )

    def _pem(self, name: str) -> bytes | None:
        """The PEM file a field names, read and checked for what it must hold."""
        path: Path | None = getattr(self, name)
        if path is None:
            return None
        what, marker, where = _PEM_KINDS[name]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the {what} {path} ({where}): {_why(exc)}") from exc
        # grpc only finds a bad PEM file at the handshake, and says little then:
        # a wrong file (a key given for a certificate) is told here, by name.
        if b"-----BEGIN " not in data:
            raise ValueError(f"the {what} {path} ({where}) is not a PEM file")
        if marker.encode() not in data:
            kind = "private key" if name == "key" else "certificate"
            raise ValueError(f"the {what} {path} ({where}) holds no {kind}")
        return data


def _with_token(metadata: Iterable[tuple[str, str | bytes]] | None, header: str) -> _Metadata:
    """The call's metadata with the token added, unless the call sends its own."""
    pairs = list(metadata or ())
    if not any(key.lower() == "authorization" for key, _ in pairs):
        pairs.append(("authorization", header))
    return pairs


class _CallDetails(grpc.ClientCallDetails):
    """A blocking call's details with other metadata (grpc gives no public constructor)."""

    def __init__(self, details: grpc.ClientCallDetails, metadata: _Metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = tuple(metadata)
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


# Not grpc.access_token_call_credentials: grpc sends call credentials only on
# TLS channels, and a tm server takes tokens on plaintext from loopback.
class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, _with_token(details.metadata, self._header))

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _AioToken:
    """What the asyncio interceptors share: the header, and the details that carry it."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self._header))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def _aio_token_interceptors(token: str) -> list[Any]:
    # One of each kind: grpc.aio files an interceptor under the first kind it
    # is an instance of, so one object of all four would see unary calls only.
    return [
        cls(token) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]
