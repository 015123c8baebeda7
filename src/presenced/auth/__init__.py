"""Digest authentication of SIP requests (RFC 3261 §22, RFC 7616 / RFC 8760), sans-I/O."""

from presenced.auth.digest import (
    ALGORITHMS,
    AuthParseError,
    AuthResult,
    Credentials,
    DigestAuthenticator,
    compute_ha1,
    compute_response,
    format_auth_header,
    parse_auth_header,
)

__all__ = [
    "ALGORITHMS",
    "AuthParseError",
    "AuthResult",
    "Credentials",
    "DigestAuthenticator",
    "compute_ha1",
    "compute_response",
    "format_auth_header",
    "parse_auth_header",
]
