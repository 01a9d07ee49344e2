"""TLS for the gRPC port and for calls to other nodes, from PEM files re-read when they change.

The server's credentials are grpcio's dynamic ones: before each new TLS
handshake grpcio asks for the certificate configuration, and the files are
read again when one of them changed (a stat of each, no crypto) or after a
SIGHUP. A pair that does not load (a key not matching its certificate, a
half-written file) leaves the last good one in force and is logged; open
connections keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from tm_client import Credentials

log = logging.getLogger(__name__)


class TlsFilesError(Exception):
    """A certificate, key or CA file cannot be used."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The TLS flags: the server's certificate and key, and what it trusts.

    ``client_ca`` turns on mTLS: clients must present a certificate it
    signed. ``peer_ca`` is what other nodes' certificates are checked
    against when this node calls them (default: ``client_ca``, else the
    system's roots).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None
    peer_ca: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise TlsFilesError(f"the {what} {path} is not a PEM file")
    return data


def _check_pair(cert: Path, key: Path) -> None:
    # The standard library checks that the key is the certificate's: grpcio
    # would only fail each handshake.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFilesError(
            f"the TLS certificate {cert} and key {key} do not load together: {exc}"
        ) from exc


def _check_ca(path: Path, what: str) -> bytes:
    data = _read(path, what)
    try:
        ssl.create_default_context(cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFilesError(f"the {what} {path} holds no usable certificate: {exc}") from exc
    return data


class ServerTls:
    """The server's TLS files in force, and the grpcio credentials that read them."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._forced = False
        self._forced_http = False
        self._current = self._load()

    def _files(self) -> list[Path]:
        c = self.config
        return [c.cert, c.key] + ([c.client_ca] if c.client_ca is not None else [])

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self._files():
            try:
                st = os.stat(path)
            except OSError:
                return self._stamp  # a file being replaced: keep what is in force
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        c = self.config
        stamp = self._stat()
        _check_pair(c.cert, c.key)
        pair = (_read(c.key, "TLS key"), _read(c.cert, "TLS certificate"))
        roots = None if c.client_ca is None else _check_ca(c.client_ca, "client CA file")
        self._stamp = stamp
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def reload_soon(self) -> None:
        """Re-reads the files before the next handshake, changed or not (SIGHUP)."""
        self._forced = True
        self._forced_http = True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by grpcio before each handshake: None keeps the one in force.
        if not self._forced and self._stat() == self._stamp:
            return None
        self._forced = False
        try:
            self._current = self._load()
        except TlsFilesError as exc:
            self._stamp = self._stat()  # not retried on every handshake
            log.error("%s; the TLS files read before stay in force", exc)
            return None
        log.info("TLS certificate reloaded from %s", self.config.cert)
        return self._current

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials to add the port with."""
        return grpc.dynamic_ssl_server_credentials(
            self._current,
            self._fetch,  # type: ignore[arg-type]  # None keeps the one in force
            require_client_authentication=self.config.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A context for the HTTP side's port, with the same files and the same client checks.

        A client certificate is optional here (it is required over gRPC under
        mTLS): when given it must chain to the client CA and identifies the
        caller; without one the caller needs a token. Each handshake looks at
        the files first, as grpcio's fetch does: a renewed certificate (or
        SIGHUP) is served from the next connection on.
        """
        current = [self._http_context()]
        stamp = [self._stat()]

        def pick(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            now = self._stat()
            if self._forced_http or now != stamp[0]:
                self._forced_http = False
                stamp[0] = now
                try:
                    current[0] = self._http_context()
                    current[0].sni_callback = pick
                except (TlsFilesError, ssl.SSLError, OSError) as exc:
                    log.error("%s; the TLS files read before stay in force (HTTP)", exc)
            sock.context = current[0]

        current[0].sni_callback = pick
        return current[0]

    def _http_context(self) -> ssl.SSLContext:
        c = self.config
        _check_pair(c.cert, c.key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(c.cert, c.key)
        if c.client_ca is not None:
            context.load_verify_locations(cafile=str(c.client_ca))
            # Asked for, verified when given, and then the caller's identity;
            # without one a caller must bring a token (a browser's login).
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def peer_credentials(self, token: str | None) -> Credentials:
        """How this node calls the others: their CA, its own pair with mTLS, and its token."""
        c = self.config
        mtls = c.client_ca is not None
        return Credentials(
            token=token,
            ca=c.peer_ca or c.client_ca,
            cert=c.cert if mtls else None,
            key=c.key if mtls else None,
            tls=True,
        )


__all__ = ["ServerTls", "TlsConfig", "TlsFilesError"]
