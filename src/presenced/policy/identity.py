"""Watcher identities as the authorization rules compare them.

RFC 4745 §7.1/§7.2 matches *authenticated identities*, not request URIs: the
principal `user@domain` (or a telephone number), whatever transport or
parameters the SUBSCRIBE happened to carry. `identity_key` reduces a URI to
that principal:

* `sip:`, `sips:`, `pres:` and `im:` are one identity family. `sips:` only
  says how the watcher was reached, `pres:`/`im:` are the abstract forms of
  the same address-of-record (RFC 3856 §5); none of them names a different
  person. (Strict RFC 3261 §19.1.4 would keep `sip:` and `sips:` apart; for an
  *identity* that distinction would let a rule be dodged by switching schemes.)
* the user part is case-sensitive, `%XX` escapes of unreserved characters are
  decoded (RFC 3261 §19.1.4), the rest of the escapes get upper-case hex;
* the host is case-insensitive (IDNA-encoded when it is not ASCII, trailing
  dot dropped);
* port, URI parameters and headers are ignored: an authenticated identity
  has none, and a `;transport=tcp` must not turn Alice into a stranger;
* `tel:` numbers compare without visual separators (RFC 3966 §5.1.1), with
  `phone-context` (case-insensitive) and `ext` as part of the identity;
* any other scheme (`mailto:`, `http:` …) is opaque: scheme folded to lower
  case, the rest compared exactly.

Everything here is pure and never touches the network.
"""

from __future__ import annotations

from typing import NamedTuple

from presenced.sip.errors import SipParseError
from presenced.sip.uri import parse_uri

__all__ = ["Identity", "identity_key", "normalize_domain"]

_SIP_FAMILY = frozenset({"sip", "sips", "pres", "im"})
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
_TEL_VISUAL = str.maketrans("", "", "-.()")


class Identity(NamedTuple):
    """A comparable principal: `family` is 'sip', 'tel' or the opaque scheme.

    `domain` is the lower-cased host for the sip family and None otherwise
    (a telephone number or a mailto has no domain for `<many domain>`).
    """

    family: str
    user: str | None
    domain: str | None
    extra: str = ""


def _unescape_unreserved(text: str) -> str:
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            code = chr(int(text[i + 1 : i + 3], 16))
            out.append(code if code in _UNRESERVED else "%" + text[i + 1 : i + 3].upper())
            i += 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def normalize_domain(domain: str) -> str:
    """Case-folded, IDNA-encoded when not ASCII, without a trailing dot."""
    value = domain.strip().rstrip(".")
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            return value.casefold()
    return value.lower()


def _strip_brackets(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        return text[1:-1].strip()
    return text


def identity_key(uri: str) -> Identity | None:
    """The comparable identity of `uri`, or None when it is not a usable URI.

    Never raises: callers evaluate rules for untrusted watcher URIs and treat
    None as "matches no identity condition" (fail closed).
    """
    if not isinstance(uri, str):
        return None
    text = _strip_brackets(uri)
    try:
        parsed = parse_uri(text)
    except (SipParseError, ValueError):
        return None
    scheme = parsed.scheme
    if scheme in _SIP_FAMILY:
        user = None if parsed.user is None else _unescape_unreserved(parsed.user)
        host = parsed.host.lower() if parsed.host.startswith("[") else normalize_domain(parsed.host)
        if not host:
            return None
        return Identity("sip", user, host)
    if scheme == "tel":
        number = parsed.host.translate(_TEL_VISUAL).lower()
        if not number:
            return None
        params = {k: (v or "") for k, v in parsed.params.items()}
        context = params.get("phone-context", "").lower()
        ext = params.get("ext", "").translate(_TEL_VISUAL).lower()
        return Identity("tel", number, None, f"{context};{ext}")
    rest = text.split(":", 1)[1]
    if not rest:
        return None
    return Identity(scheme, rest, None)
