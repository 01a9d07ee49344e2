"""Test certificates: a CA, a server certificate, client certificates and an unrelated CA.

Everything is PEM in a directory of the caller's (``make_certs(tmp_path)``).
Keys are EC P-256, so a whole set takes milliseconds, not the seconds RSA
key generation would.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificates are valid; they start an hour back so a clock a
#: little behind (another container, a VM) still accepts them.
VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tm tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _ca(common_name: str) -> _Issuer:
    key = _key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def _leaf(
    issuer: _Issuer,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    names: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        _builder(_name(common_name), issuer.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Private keys readable by their owner only, as a careful operator keeps them
    # (and as a server that checks a key file's mode would want).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return path


@dataclass(frozen=True)
class Certs:
    """PEM files of a test PKI in ``directory``.

    ``ca`` signed ``server_cert`` (DNS ``localhost``, IP ``127.0.0.1``; usable
    to serve and, for node-to-node calls, to be a client) and every
    ``client()`` certificate; ``other_ca`` is unrelated to all of them.
    """

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    other_ca_key: Path
    _issuer: _Issuer = field(repr=False)
    _other: _Issuer = field(repr=False)

    def client(self, name: str, *, untrusted: bool = False) -> tuple[Path, Path]:
        """A client certificate with common name ``name``, and its key: ``(cert, key)``.

        ``untrusted`` has ``other_ca`` sign it, so a server trusting ``ca`` refuses it.
        The files are made on the first call for a name and reused after.
        """
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        prefix = "untrusted-client" if untrusted else "client"
        cert_path = self.directory / f"{prefix}-{stem}.pem"
        key_path = self.directory / f"{prefix}-{stem}.key"
        if not (cert_path.exists() and key_path.exists()):
            issuer = self._other if untrusted else self._issuer
            cert, key = _leaf(issuer, name, [ExtendedKeyUsageOID.CLIENT_AUTH])
            _write_key(key_path, key)
            _write_cert(cert_path, cert)
        return cert_path, key_path


def make_certs(directory: Path) -> Certs:
    """Makes a CA, a server certificate and an unrelated CA in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = _ca("tm test CA")
    other = _ca("unrelated test CA")
    server, server_key = _leaf(
        issuer,
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    return Certs(
        directory=directory,
        ca=_write_cert(directory / "ca.pem", issuer.cert),
        ca_key=_write_key(directory / "ca.key", issuer.key),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        other_ca=_write_cert(directory / "other-ca.pem", other.cert),
        other_ca_key=_write_key(directory / "other-ca.key", other.key),
        _issuer=issuer,
        _other=other,
    )
