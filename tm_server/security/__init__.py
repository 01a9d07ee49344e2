"""Who may call tm: roles and principals, the tokens file, and TLS (see the README's Security)."""

from .roles import Grant, Principal, Role, parse_grant
from .tls import ServerTls, TlsConfig, TlsFilesError
from .tokens import Tokens, TokensFileError, hash_token, new_token

__all__ = [
    "Grant",
    "Principal",
    "Role",
    "ServerTls",
    "TlsConfig",
    "TlsFilesError",
    "Tokens",
    "TokensFileError",
    "hash_token",
    "new_token",
    "parse_grant",
]
