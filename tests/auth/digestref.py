"""An independent reference digest client (what a phone does), built on hashlib only.

It deliberately shares no code with presenced.auth: challenges are parsed
with a regex and responses are hashed here, so the tests check the server
against RFC 2617 / RFC 7616 arithmetic rather than against itself.
"""

from __future__ import annotations

import hashlib
import re

from presenced.sip import Request, parse_message

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def H(alg: str, s: str) -> str:
    return HASHES[alg](s.encode("utf-8")).hexdigest()


def parse_challenge(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest", value
    out = {}
    for m in _PARAM.finditer(rest):
        name = m.group(1).lower()
        out[name] = re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
    return out


def response(alg, username, realm, password, method, uri, nonce, nc, cnonce, qop="auth", ha1=None):
    if ha1 is None:
        ha1 = H(alg, f"{username}:{realm}:{password}")
    ha2 = H(alg, f"{method}:{uri}")
    return H(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def authorization(
    chal: dict[str, str],
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    nc: str = "00000001",
    cnonce: str = "0a4f113b",
    alg: str | None = None,
    drop: tuple[str, ...] = (),
    override: dict[str, str] | None = None,
    ha1: str | None = None,
) -> str:
    """An Authorization value answering `chal`; `drop` omits params, `override` replaces them."""
    alg = alg or chal.get("algorithm", "MD5")
    realm = chal["realm"]
    resp = response(alg, username, realm, password, method, uri, chal["nonce"], nc, cnonce, ha1=ha1)
    params = {
        "username": f'"{username}"',
        "realm": f'"{realm}"',
        "nonce": f'"{chal["nonce"]}"',
        "uri": f'"{uri}"',
        "response": f'"{resp}"',
        "algorithm": alg,
        "cnonce": f'"{cnonce}"',
        "opaque": f'"{chal["opaque"]}"' if "opaque" in chal else None,
        "qop": "auth",
        "nc": nc,
    }
    for k, v in (override or {}).items():
        params[k] = v
    return "Digest " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None and k not in drop)


def request(
    method: str = "SUBSCRIBE",
    uri: str = "sip:bob@example.com",
    auth: str | list[str] | None = None,
    header: str = "Authorization",
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKref1",
        "From: <sip:alice@example.com>;tag=1",
        f"To: <{uri}>",
        "Call-ID: ref-1@192.0.2.1",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
    ]
    for a in [auth] if isinstance(auth, str) else auth or []:
        lines.append(f"{header}: {a}")
    msg = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg
