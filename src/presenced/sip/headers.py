"""Header names, compact forms and typed header values (RFC 3261 §7.3, §20).

Values are parsed only when a caller asks for them: a PUBLISH refresh never
needs its Accept header parsed, so it never pays for it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from presenced.sip.errors import SipParseError
from presenced.sip.uri import parse_params, split_hostport, split_params

# Canonical spelling for the headers we emit or look up; everything else is
# kept as received. Keys are lower-case.
_CANONICAL = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact",
    "expires": "Expires",
    "min-expires": "Min-Expires",
    "event": "Event",
    "allow-events": "Allow-Events",
    "subscription-state": "Subscription-State",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "content-type": "Content-Type",
    "content-length": "Content-Length",
    "content-encoding": "Content-Encoding",
    "route": "Route",
    "record-route": "Record-Route",
    "max-forwards": "Max-Forwards",
    "accept": "Accept",
    "accept-encoding": "Accept-Encoding",
    "allow": "Allow",
    "supported": "Supported",
    "require": "Require",
    "proxy-require": "Proxy-Require",
    "unsupported": "Unsupported",
    "user-agent": "User-Agent",
    "server": "Server",
    "www-authenticate": "WWW-Authenticate",
    "authorization": "Authorization",
    "proxy-authorization": "Proxy-Authorization",
    "retry-after": "Retry-After",
    "subject": "Subject",
    "refer-to": "Refer-To",
    "referred-by": "Referred-By",
    "p-asserted-identity": "P-Asserted-Identity",
    "warning": "Warning",
    "date": "Date",
}

COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "s": "subject",
    "k": "supported",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1).
MULTI_VALUE = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow-events",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "content-encoding",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "service-route",
    }
)


_LWS_COLON = re.compile(r"[ \t]*:[ \t]*")
# The Via every UA sends: `SIP/2.0/UDP host[:port];params`, no LWS, no IPv6.
# Anything else takes the general path, which also produces the errors.
_VIA_COMMON = re.compile(r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9._-]+)(?::([0-9]{1,5}))?(?=;|\Z)")


# Sent-protocol and sent-by as received (the Via before its first ';') ->
# (transport, host, port): a UA sends the same one on every request, so the
# regular expression runs once per UA, not per message.
_SENT_BY: dict[str, tuple[str, str, int | None]] = {}


def _sent_by(head: str) -> tuple[str, str, int | None] | None:
    m = _VIA_COMMON.match(head)
    if m is None:
        return None
    port = m.group(3)
    if port is not None and not 0 < int(port) < 65536:
        return None
    known = (m.group(1).upper(), m.group(2), int(port) if port is not None else None)
    if len(_SENT_BY) >= 1024:
        _SENT_BY.clear()
    _SENT_BY[head] = known
    return known


def _is_digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


_NORM_CACHE: dict[str, str] = {}


def normalize_name(name: str) -> str:
    """Lower-case key for lookups; compact forms expanded (memoised: names repeat)."""
    key = _NORM_CACHE.get(name)
    if key is not None:
        return key
    low = name.lower()
    if len(low) == 1:
        low = COMPACT.get(low, low)
    if len(_NORM_CACHE) < 4096:
        _NORM_CACHE[name] = low
    return low


def canonical_name(key: str) -> str:
    c = _CANONICAL.get(key)
    if c is not None:
        return c
    return "-".join(p[:1].upper() + p[1:] for p in key.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a list header on commas outside quotes and <...>."""
    if "," not in value:
        return [value.strip()] if value.strip() else []
    out: list[str] = []
    start = 0
    in_q = False
    in_angle = False
    esc = False
    for i, ch in enumerate(value):
        if esc:
            esc = False
        elif in_q:
            if ch == "\\":
                esc = True
            elif ch == '"':
                in_q = False
        elif ch == '"':
            in_q = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
    if in_q:
        raise SipParseError("unterminated quoted string")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


class Via:
    __slots__ = ("raw", "protocol", "transport", "host", "port", "params")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        if '"' not in raw:
            semi = raw.find(";")
            head = raw if semi < 0 else raw[:semi]
            known = _SENT_BY.get(head)
            if known is None:
                known = _sent_by(head)
            if known is not None:
                self.protocol = "SIP/2.0"
                self.transport, self.host, self.port = known
                self.params = parse_params(raw[semi + 1 :].split(";")) if semi >= 0 else {}
                return
        parts = split_params(raw)
        sent = parts[0].strip()
        # "SIP / 2.0 / UDP host:port" (LWS allowed around slashes)
        slash = sent.split("/", 2)
        if len(slash) != 3:
            raise SipParseError("malformed Via sent-protocol")
        proto = (slash[0].strip() + "/" + slash[1].strip()).upper()
        tail = slash[2].strip()
        sp = 0
        while sp < len(tail) and tail[sp] not in " \t":
            sp += 1
        transport = tail[:sp].upper()
        # LWS is allowed around the ':' of sent-by, nowhere else.
        sent_by = _LWS_COLON.sub(":", tail[sp:].strip())
        if proto != "SIP/2.0" or not transport or not sent_by or " " in sent_by or "\t" in sent_by:
            raise SipParseError("malformed Via")
        self.protocol = proto
        self.transport = transport
        self.host, self.port = split_hostport(sent_by, raw)
        self.params = parse_params(parts[1:])

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __repr__(self) -> str:
        return f"Via({self.raw!r})"


class CSeq:
    __slots__ = ("seq", "method")

    def __init__(self, raw: str) -> None:
        parts = raw.split()
        if len(parts) != 2 or not _is_digits(parts[0]) or len(parts[0]) > 10:
            raise SipParseError("malformed CSeq")
        self.seq = int(parts[0])
        if self.seq >= 2**31:
            raise SipParseError("CSeq number out of range")
        self.method = parts[1]


class Event:
    """`Event: presence.winfo;id=7` → package 'presence', template 'winfo'.

    `name` is the full package name with template as Kamailio keys events
    ('presence.winfo'); `params` keeps every parameter (id and package params
    such as 'sla' or 'call-id').
    """

    __slots__ = ("raw", "name", "package", "template", "params")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        parts = split_params(raw)
        name = parts[0].strip()
        if not name or any(c in name for c in " \t,\"<>"):
            raise SipParseError("malformed Event header")
        self.name = name.lower()
        dot = self.name.find(".")
        self.template: str | None
        if dot >= 0:
            self.package, self.template = self.name[:dot], self.name[dot + 1 :]
        else:
            self.package, self.template = self.name, None
        self.params = parse_params(parts[1:])

    @property
    def id(self) -> str | None:
        return self.params.get("id")


class SubscriptionState:
    __slots__ = ("state", "params")

    def __init__(self, raw: str) -> None:
        parts = split_params(raw)
        self.state = parts[0].strip().lower()
        self.params = parse_params(parts[1:])

    @property
    def expires(self) -> int | None:
        v = self.params.get("expires")
        return int(v) if v and _is_digits(v) else None

    @property
    def reason(self) -> str | None:
        return self.params.get("reason")


class ContentType:
    __slots__ = ("raw", "mime", "params")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        parts = split_params(raw)
        mime = parts[0].strip().lower().replace(" ", "")
        if mime and ("/" not in mime or mime.startswith("/") or mime.endswith("/")):
            raise SipParseError("malformed Content-Type")
        self.mime = mime
        self.params = parse_params(parts[1:])


# CSeq, Event and Content-Type values repeat on nearly every request; the
# parsed objects are shared (read-only) like parse_uri's.
_VALUE_CACHE_MAX = 1024
_EVENT_CACHE: dict[str, Event] = {}
_CTYPE_CACHE: dict[str, ContentType] = {}


_CSEQ_CACHE: dict[str, CSeq] = {}


def _cached_parser(cls: type, cache: dict) -> Callable[[str], Any]:
    """Header values repeat (same CSeq method, Event, Content-Type): parse each
    distinct text once and share the read-only result."""

    def parse(raw: str):
        value = cache.get(raw)
        if value is None:
            value = cls(raw)
            if len(cache) >= _VALUE_CACHE_MAX:
                cache.clear()
            cache[raw] = value
        return value

    return parse


parse_cseq: Callable[[str], CSeq] = _cached_parser(CSeq, _CSEQ_CACHE)
parse_event: Callable[[str], Event] = _cached_parser(Event, _EVENT_CACHE)
parse_content_type: Callable[[str], ContentType] = _cached_parser(ContentType, _CTYPE_CACHE)


def parse_delta(value: str, name: str) -> int:
    """Expires / Min-Expires / Max-Forwards value as a non-negative int."""
    v = value.strip()
    if not _is_digits(v):
        raise SipParseError(f"malformed {name} header")
    n = int(v)
    # RFC 3261 §20.19: values above 2**32-1 are treated as 2**32-1.
    return min(n, 2**32 - 1)
