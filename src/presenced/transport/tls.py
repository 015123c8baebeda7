"""TLS contexts for the tls and wss listeners and for outgoing TLS connections.

Built once at start from `[tls]` (Kamailio's tls module names); every failure
is a `TlsConfigError` that names the parameter, so `presenced serve` exits 2
with a line an operator can act on instead of a traceback at the first
handshake.

Outgoing connections (a NOTIFY to a `transport=tls` or `sips:` Contact whose
connection is gone) check the phone's certificate chain against `ca_list`
when it is set, without matching the host name: phones' Contacts carry IP
addresses their certificates rarely name. Without `ca_list` the connection is
encrypted but not authenticated, like Kamailio's client default.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

VERSIONS = {"TLSv1.2+": ssl.TLSVersion.TLSv1_2, "TLSv1.3+": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _readable(key: str, path: str) -> None:
    if not path:
        raise TlsConfigError(key, "not set (needed by a tls or wss listener)")
    if not os.path.isfile(path):
        raise TlsConfigError(key, f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(key, f"{path}: not readable by this user")


def _reason(e: Exception) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


def _load_ca(ctx: ssl.SSLContext, ca_list: str) -> None:
    _readable("tls.ca_list", ca_list)
    try:
        ctx.load_verify_locations(cafile=ca_list)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsConfigError("tls.ca_list", f"{ca_list}: no usable PEM CA certificate ({_reason(e)})") from None


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted")


def _load_identity(ctx: ssl.SSLContext, certificate: str, private_key: str) -> None:
    _readable("tls.certificate", certificate)
    _readable("tls.private_key", private_key)
    try:  # is the certificate itself readable PEM? (blame the right field)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certificate)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsConfigError("tls.certificate", f"{certificate}: not a PEM certificate ({_reason(e)})") from None
    try:
        # a callback, so OpenSSL never prompts on the terminal for a passphrase
        ctx.load_cert_chain(certificate, private_key, password=_no_passphrase)
    except (ssl.SSLError, OSError, ValueError) as e:
        why = _reason(e)
        if "MISMATCH" in why.upper():
            raise TlsConfigError("tls.private_key", f"{private_key} does not match tls.certificate {certificate}") from None
        raise TlsConfigError("tls.private_key", f"{private_key}: not a usable PEM private key ({why}; "
                                                 "encrypted keys are not supported)") from None


def server_context(tls: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS.get(str(tls.tls_method), ssl.TLSVersion.TLSv1_2)
    _load_identity(ctx, str(tls.certificate), str(tls.private_key))
    if tls.ca_list:
        _load_ca(ctx, str(tls.ca_list))
    if tls.require_certificate or tls.verify_certificate:
        if not tls.ca_list:
            key = "tls.require_certificate" if tls.require_certificate else "tls.verify_certificate"
            raise TlsConfigError(key, "client certificates can only be verified against tls.ca_list, which is not set")
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_certificate else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def client_context(tls: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = VERSIONS.get(str(tls.tls_method), ssl.TLSVersion.TLSv1_2)
    ctx.check_hostname = False
    if tls.ca_list:
        _load_ca(ctx, str(tls.ca_list))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls.certificate and tls.private_key:  # offered to phones that ask for one
        _load_identity(ctx, str(tls.certificate), str(tls.private_key))
    return ctx
