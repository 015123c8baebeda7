"""SIP requests and responses: parsing from bytes and serialising to bytes.

Parsing splits the header block once into (name, value) pairs and an index
keyed by lower-case name; typed views (Via, CSeq, Event, ...) are built on
first access and cached. That keeps a PUBLISH refresh or a retransmission
cheap: only the headers the server needs are ever interpreted.
"""

from __future__ import annotations

import re
import os
from typing import Callable, Iterable

from presenced._build import PURE_ENV, _truthy
from presenced.sip.errors import MessageTooLarge, SipParseError
from presenced.sip.headers import (
    MULTI_VALUE,
    ContentType,
    CSeq,
    Event,
    SubscriptionState,
    Via,
    canonical_name,
    _NORM_CACHE,
    normalize_name,
    parse_content_type,
    parse_cseq,
    parse_delta,
    parse_event,
    split_commas,
)
from presenced.sip.uri import NameAddr, SipURI, parse_name_addr, parse_uri

# The C scanner of well-formed header blocks (sip/_scan.c), when it was
# built and the pure-Python mode is not asked for; None otherwise.
_scan_head: Callable[[bytes, dict[str, tuple[str, str]], int], tuple[str, dict[str, list[str]], int, int] | None] | None
if _truthy(os.environ.get(PURE_ENV)):
    _scan_head = None
else:
    try:
        from presenced.sip._scan import scan_head as _scan_head
    except ImportError:
        _scan_head = None

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024
MAX_HEADERS = 200



def is_digits(s: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and '١', which int() rejects or misreads."""
    return s.isascii() and s.isdigit()


def _header_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """(end of header block, start of body), or (-1, -1); the earliest of CRLFCRLF and bare LFLF."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(data))
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return -1, -1


_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")
# Header names seen before and known to be tokens: most messages repeat the
# same dozen names, so validation becomes a set lookup.
_KNOWN_NAMES: set[str] = set()


def is_token(s: str) -> bool:
    if s in _KNOWN_NAMES:
        return True
    if not _TOKEN_RE.match(s):
        return False
    if len(_KNOWN_NAMES) < 4096:
        _KNOWN_NAMES.add(s)
    return True


# an Accept parameter q=0 (0, 0.0, 0.00, 0.000): "not acceptable"
_Q_ZERO = re.compile(r"(?:^|;)\s*q\s*=\s*0(?:\.0{0,3})?\s*(?:;|$)", re.IGNORECASE)

class Message:
    """Common part of requests and responses."""

    __slots__ = ("_headers", "_index", "body", "_cache", "_raw")

    def __init__(
        self, headers: list[tuple[str, str]] | None = None, body: bytes = b"", _index: dict[str, list[str]] | None = None,
        _raw: bytes | None = None,
    ) -> None:
        # With `_raw` (parse_message's C path) the ordered list is made on first use.
        self._headers: list[tuple[str, str]] | None = headers if headers is not None or _raw is not None else []
        self._raw = _raw
        self.body = body
        self._cache: dict[str, object] = {}
        if _index is not None:  # parse_message built it while splitting
            self._index = _index
            return
        self._index = {}
        for name, value in self.headers:
            self._index.setdefault(normalize_name(name), []).append(value)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) in message order, names as received."""
        h = self._headers
        if h is None:
            assert self._raw is not None
            h = self._headers = _split_head(self._raw)[1]
        return h

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        self._headers = value

    # -- raw access -------------------------------------------------------
    def get(self, name: str) -> str | None:
        """First value of a header (the whole line for list headers)."""
        vals = self._index.get(normalize_name(name))
        return vals[0] if vals else None

    def get_all(self, name: str) -> list[str]:
        """Every value; list headers are split on commas."""
        key = normalize_name(name)
        vals = self._index.get(key)
        if not vals:
            return []
        if key in MULTI_VALUE:
            out: list[str] = []
            for v in vals:
                out.extend(split_commas(v))
            return out
        return list(vals)

    def count(self, name: str) -> int:
        return len(self._index.get(normalize_name(name), ()))

    def has(self, name: str) -> bool:
        return normalize_name(name) in self._index

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self._index.setdefault(normalize_name(name), []).append(value)
        self._cache.clear()

    def set_header(self, name: str, value: str) -> None:
        key = normalize_name(name)
        self.headers = [(n, v) for n, v in self.headers if normalize_name(n) != key]
        self.headers.append((name, value))
        self._index[key] = [value]
        self._cache.clear()

    def _single(self, key: str) -> str:
        vals = self._index.get(key)
        if not vals:
            raise SipParseError(f"missing {canonical_name(key)} header")
        if len(vals) > 1 and key in ("call-id", "cseq", "from", "to", "max-forwards", "content-length"):
            if any(v.strip() != vals[0].strip() for v in vals[1:]):
                raise SipParseError(f"multiple {canonical_name(key)} headers")
        return vals[0]

    # -- typed accessors (lazy, cached) ------------------------------------
    @property
    def vias(self) -> list[Via]:
        v = self._cache.get("via")
        if v is None:
            vals = self._index.get("via")
            if vals and len(vals) == 1 and "," not in vals[0] and vals[0].strip():
                raw = [vals[0].strip()]  # one Via line with one value: nothing to split
            else:
                raw = self.get_all("via")
            if not raw:
                raise SipParseError("missing Via header")
            v = [Via(x) for x in raw]
            self._cache["via"] = v
        return v  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        v = self._cache.get("via")
        return v[0] if v is not None else self.vias[0]  # type: ignore[index]

    @property
    def call_id(self) -> str:
        v = self._cache.get("call-id")
        if v is None:
            v = self._single("call-id").strip()
            if not v or " " in v:
                raise SipParseError("malformed Call-ID")
            self._cache["call-id"] = v
        return v  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        v = self._cache.get("cseq")
        if v is None:
            v = parse_cseq(self._single("cseq"))
            self._cache["cseq"] = v
        return v  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        v = self._cache.get("from")
        if v is None:
            v = parse_name_addr(self._single("from"))
            self._cache["from"] = v
        return v  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        v = self._cache.get("to")
        if v is None:
            v = parse_name_addr(self._single("to"))
            self._cache["to"] = v
        return v  # type: ignore[return-value]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; a lone `*` is returned as a NameAddr whose raw is '*'."""
        v = self._cache.get("contact")
        if v is None:
            out = []
            for raw in self.get_all("contact"):
                if raw.strip() == "*":
                    out.append(NameAddr(None, "*", {}, "*"))
                else:
                    out.append(parse_name_addr(raw))
            v = out
            self._cache["contact"] = v
        return v  # type: ignore[return-value]

    @property
    def record_route(self) -> list[NameAddr]:
        return [parse_name_addr(x) for x in self.get_all("record-route")]

    @property
    def route(self) -> list[NameAddr]:
        return [parse_name_addr(x) for x in self.get_all("route")]

    def _delta(self, key: str) -> int | None:
        vals = self._index.get(key)
        if not vals:
            return None
        v = vals[0]
        if v.isascii() and v.isdigit():  # the usual case; parse_delta strips, checks, names the error
            n = int(v)
            return n if n < 4294967295 else 4294967295
        return parse_delta(v, canonical_name(key))

    @property
    def expires(self) -> int | None:
        return self._delta("expires")

    @property
    def min_expires(self) -> int | None:
        return self._delta("min-expires")

    @property
    def max_forwards(self) -> int | None:
        v = self._delta("max-forwards")
        if v is not None and v > 255:
            raise SipParseError("Max-Forwards out of range")
        return v

    @property
    def event(self) -> Event | None:
        if "event" in self._cache:
            return self._cache["event"]  # type: ignore[return-value]
        vals = self._index.get("event")
        if not vals:
            ev = None
        else:
            if len(vals) > 1 or "," in vals[0]:
                raise SipParseError("more than one Event header")
            ev = parse_event(vals[0])
        self._cache["event"] = ev
        return ev

    @property
    def subscription_state(self) -> SubscriptionState | None:
        v = self.get("subscription-state")
        return SubscriptionState(v) if v is not None else None

    @property
    def sip_etag(self) -> str | None:
        v = self.get("sip-etag")
        return v.strip() if v is not None else None

    @property
    def sip_if_match(self) -> str | None:
        vals = self._index.get("sip-if-match")
        if not vals:
            return None
        if len(vals) > 1 or "," in vals[0] or " " in vals[0].strip():
            raise SipParseError("SIP-If-Match must hold exactly one entity-tag")
        v = vals[0].strip()
        if not v:
            raise SipParseError("empty SIP-If-Match")
        return v

    @property
    def content_type(self) -> ContentType | None:
        vals = self._index.get("content-type")
        if not vals or not vals[0].strip():
            return None
        return parse_content_type(vals[0])

    @property
    def accept(self) -> list[str] | None:
        """Accepted MIME types (lower-case, params dropped); None when absent.
        A type with q=0 is refused, not accepted; an empty Accept accepts
        nothing (RFC 3261 §20.1)."""
        if not self.has("accept"):
            return None
        out: list[str] = []
        for x in self.get_all("accept"):
            mime, _, params = x.partition(";")
            mime = mime.strip().lower()
            if mime and not (params and _Q_ZERO.search(params)):
                out.append(mime)
        return out

    def option_tags(self, name: str) -> list[str]:
        return [x.strip().lower() for x in self.get_all(name) if x.strip()]

    # -- serialisation -----------------------------------------------------
    def _start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise with a fresh Content-Length matching the body."""
        lines = [self._start_line()]
        for name, value in self.headers:
            if normalize_name(name) == "content-length":
                continue
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


class Request(Message):
    __slots__ = ("method", "uri_text", "_uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        _index: dict[str, list[str]] | None = None,
        _raw: bytes | None = None,
    ) -> None:
        super().__init__(headers, body, _index, _raw)
        self.method = method
        self.uri_text = uri
        self._uri: SipURI | None = None

    @classmethod
    def _parsed(cls, method: str, uri: str, headers: list[tuple[str, str]] | None, index: dict[str, list[str]],
                raw: bytes) -> Request:
        """parse_message's constructor: the index is already built."""
        return cls(method, uri, headers, b"", index, raw)

    @property
    def uri(self) -> SipURI:
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    def _start_line(self) -> str:
        return f"{self.method} {self.uri_text} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        _index: dict[str, list[str]] | None = None,
        _raw: bytes | None = None,
    ) -> None:
        super().__init__(headers, body, _index, _raw)
        self.status = status
        self.reason = reason

    @classmethod
    def _parsed(cls, status: int, reason: str, headers: list[tuple[str, str]] | None, index: dict[str, list[str]],
                raw: bytes) -> Response:
        return cls(status, reason, headers, b"", index, raw)

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# Text before a header's colon, as received → (name, lookup key); only names
# that passed the token check get in, so a hit needs no further validation.
_LINE_NAMES: dict[str, tuple[str, str]] = {}


def _line_name(raw: str, line: str) -> tuple[str, str]:
    name = raw.rstrip()
    if not name:
        raise SipParseError(f"malformed header line '{line[:40]}'")
    if name not in _KNOWN_NAMES and not is_token(name):
        raise SipParseError(f"malformed header name '{name[:40]}'")
    known = (name, normalize_name(name))
    if len(_LINE_NAMES) < 4096:
        _LINE_NAMES[raw] = known
    return known


def _split_headers(rest: str, index: dict[str, list[str]]) -> list[tuple[str, str]]:
    if rest[:1] not in (" ", "\t") and "\n " not in rest and "\n\t" not in rest:
        # No folded lines (the usual case): the lean loop.
        # (Plain method calls, not cached bound methods: mypyc turns
        # `d.get(k)` and `l.append(x)` into direct C calls.)
        headers: list[tuple[str, str]] = []
        for line in rest.split("\n") if rest else ():
            if not line:
                continue
            raw, sep, value = line.partition(":")
            if not sep:
                raise SipParseError(f"malformed header line '{line[:40]}'")
            known = _LINE_NAMES.get(raw) or _line_name(raw, line)
            value = value.strip()
            headers.append((known[0], value))
            vals = index.get(known[1])
            if vals is None:
                index[known[1]] = [value]
            else:
                vals.append(value)
        return headers
    return _split_folded(rest, index)


def _split_folded(rest: str, index: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Header lines into (name, value) pairs, filling `index` (lower-case name →
    values) in the same pass: one dict probe per line instead of a second loop."""
    headers: list[tuple[str, str]] = []
    key = ""
    for line in (rest.split("\n") if rest else ()):
        if not line:
            continue
        c = line[0]
        if c == " " or c == "\t":
            if not headers:
                raise SipParseError("continuation line before first header")
            name, value = headers[-1]
            more = line.strip()
            if more:
                value = value + " " + more if value else more
                headers[-1] = (name, value)
                index[key][-1] = value
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip()
        if not sep or not name:
            raise SipParseError(f"malformed header line '{line[:40]}'")
        if name not in _KNOWN_NAMES and not is_token(name):
            raise SipParseError(f"malformed header name '{name[:40]}'")
        value = value.strip()
        headers.append((name, value))
        key = _NORM_CACHE.get(name) or normalize_name(name)
        vals = index.get(key)
        if vals is None:
            index[key] = [value]
        else:
            vals.append(value)
    return headers


def _decode(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        return head.decode("utf-8", "surrogateescape")


def _split_head(data: bytes) -> tuple[str, list[tuple[str, str]], dict[str, list[str]], int]:
    """(start line, headers, index, body start): the general path, for any
    input (bare LFs, folded lines, undecodable bytes, no blank line...)."""
    # Leading CRLFs before a message are allowed (§7.5).
    start = 0
    n = len(data)
    while start < n and data[start] in (13, 10):
        start += 1
    end, body_start = _header_end(data, start)
    if end < 0:
        end = len(data)
        while end > start and data[end - 1] in (13, 10):
            end -= 1
        body_start = len(data)
    if end - start > MAX_HEADER_BYTES:
        raise MessageTooLarge("Message Too Large (headers)")
    head = _decode(data[start:end])
    if "\r" in head:
        head = head.replace("\r\n", "\n")
    nl = head.find("\n")
    first = head if nl < 0 else head[:nl]
    if not first:
        raise SipParseError("empty message")
    rest = head[nl + 1 :] if nl >= 0 else ""
    index: dict[str, list[str]] = {}
    headers = _split_headers(rest, index)
    return first, headers, index, body_start


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one message.

    `stream=False` is datagram framing (RFC 3261 §18.3): a missing
    Content-Length means the body runs to the end of the datagram, a larger
    one is an error, a smaller one truncates. With `stream=True` the framer
    has already cut the message at Content-Length.
    """
    scanned = _scan_head(data, _LINE_NAMES, MAX_HEADER_BYTES) if _scan_head is not None else None
    headers: list[tuple[str, str]] | None
    if scanned is not None:
        first, index, body_start, count = scanned
        headers = None
    else:
        first, headers, index, body_start = _split_head(data)
        count = len(headers)
    if count > MAX_HEADERS:
        raise MessageTooLarge("Message Too Large (too many headers)")

    body = data[body_start:]
    msg: Request | Response
    # A response is never answered, so its parse errors carry status 0.
    err_status = 400
    if first[:4].upper() == "SIP/":
        err_status = 0
        parts = first.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0" or not is_digits(parts[1]) or len(parts[1]) != 3:
            raise SipParseError("malformed status line", status=0)
        status = int(parts[1])
        if status < 100 or status > 699:
            raise SipParseError("status code out of range", status=0)
        msg = Response._parsed(status, parts[2] if len(parts) > 2 else "", headers, index, data)
    else:
        parts = first.split(" ")
        if len(parts) != 3:
            parts = first.split()
            if len(parts) != 3:
                raise SipParseError("malformed request line")
        method, uri, version = parts
        if method not in _KNOWN_NAMES and not is_token(method):
            raise SipParseError("malformed method")
        if version.upper() != "SIP/2.0":
            if version.upper().startswith("SIP/"):
                raise SipParseError("Version Not Supported", status=505)
            raise SipParseError("malformed request line")
        if not uri or ":" not in uri or "<" in uri or ">" in uri:
            raise SipParseError("malformed Request-URI")
        msg = Request._parsed(method, uri, headers, index, data)

    cl_vals = msg._index.get("content-length")
    if cl_vals:
        cl_raw = cl_vals[0].strip()
        if not (cl_raw.isascii() and cl_raw.isdigit()):
            raise SipParseError("malformed Content-Length", err_status)
        if len(cl_vals) > 1 and any(v.strip() != cl_raw for v in cl_vals[1:]):
            # RFC 4475 'mcl01': there is no way to know where the body ends.
            raise SipParseError("multiple Content-Length values", err_status)
        cl = int(cl_raw)
        if cl > MAX_BODY_BYTES:
            raise MessageTooLarge("Message Too Large (body)")
        if len(body) < cl:
            raise SipParseError("Content-Length larger than message", err_status)
        if len(body) != cl:
            body = body[:cl]
    elif stream:
        raise SipParseError("missing Content-Length on a stream transport", err_status)
    elif len(body) > MAX_BODY_BYTES:
        raise MessageTooLarge("Message Too Large (body)")
    msg.body = body
    return msg


def check_request(req: Request) -> None:
    """Mandatory headers of a request (RFC 3261 §8.1.1); raises with the reason."""
    uri = req.uri  # raises when malformed (e.g. IPv6 reference without ']')
    if uri.scheme in ("sip", "sips") and uri.headers is not None:
        # RFC 3261 §19.1.1 table / RFC 4475 'escruri': no headers in a Request-URI.
        raise SipParseError("header component not allowed in Request-URI")
    req.top_via  # noqa: B018 - raises when missing/malformed
    req.call_id  # noqa: B018
    cseq = req.cseq
    if cseq.method != req.method:
        raise SipParseError("CSeq method does not match the request method")
    req.from_.uri  # noqa: B018 - the name-addr and its URI must parse
    req.to.uri  # noqa: B018
    if req.max_forwards is None:
        raise SipParseError("missing Max-Forwards")


def _response_to(req: Request, value: str, status: int, to_tag: str | None) -> str:
    """The response's To: the request's, with `to_tag` added when it had none
    (not on 100 Trying)."""
    if to_tag and status > 100:
        try:
            has_tag = req.to.tag is not None
        except SipParseError:
            has_tag = True
        if not has_tag:
            return f"{value};tag={to_tag}"
    return value


def build_response(
    req: Request,
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> bytes:
    """Serialise a response to `req` (RFC 3261 §8.2.6.2).

    Via, From, Call-ID and CSeq are copied verbatim; To gets `to_tag` when the
    request had none and the status is not 100.
    """
    idx = req._index
    extra = ""
    for name, value in headers:
        extra += f"{name}: {value}\r\n"
    vias = idx.get("via")
    frm = idx.get("from")
    to = idx.get("to")
    cid = idx.get("call-id")
    cseq = idx.get("cseq")
    if vias is not None and len(vias) == 1 and frm and to and cid and cseq:
        # The usual request (one Via line, every header present): one string
        # built in one step instead of a list of lines joined.
        tv = _response_to(req, to[0], status, to_tag)
        head = (f"SIP/2.0 {status} {reason}\r\nVia: {vias[0]}\r\nFrom: {frm[0]}\r\nTo: {tv}\r\n"
                f"Call-ID: {cid[0]}\r\nCSeq: {cseq[0]}\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
        data = head.encode("utf-8", "surrogateescape")
        return data + body if body else data
    lines = [f"SIP/2.0 {status} {reason}"]
    for v in idx.get("via", ()):
        lines.append("Via: " + v)
    for v in idx.get("from", ()):
        lines.append("From: " + v)
        break
    to = idx.get("to")
    if to:
        tv = _response_to(req, to[0], status, to_tag)
        lines.append("To: " + tv)
    for v in idx.get("call-id", ()):
        lines.append("Call-ID: " + v)
        break
    for v in idx.get("cseq", ()):
        lines.append("CSeq: " + v)
        break
    return ("\r\n".join(lines) + "\r\n" + extra + f"Content-Length: {len(body)}\r\n\r\n").encode(
        "utf-8", "surrogateescape") + body
