"""SIP/SIPS/TEL/PRES URIs (RFC 3261 §19.1) and their comparison rules (§19.1.4).

Presence keys its state by URI, so URI comparison is correctness, not
cosmetics: `sip:alice@EXAMPLE.com` and `sip:alice@example.com` are one
presentity, `sip:Alice@example.com` is another.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from presenced.sip.errors import SipParseError

_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")

_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3261 §25.1 `unreserved`: these are equivalent to their %HEX HEX form.
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
# Host, IPv6 and control-character checks, compiled: the hot path runs them per URI.
_HOST_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+\Z")
_CTL_RE = re.compile(r"[\x00-\x20\x7f]")
_BAD_PARAM_NAME_RE = re.compile(r'[ \t"]')
# RFC 2616 `separators` minus whitespace: not allowed in an unquoted display name.
_DISPLAY_SEPARATORS = frozenset('()<>@,;:\\"/[]?={}')


def _norm_escapes(s: str) -> str:
    """Decode %HEX HEX of unreserved characters, upper-case the hex of the rest.

    RFC 3261 §19.1.4: characters other than those in the reserved set are
    equivalent to their escaped form; reserved ones are not.
    """
    if "%" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "%" and i + 2 < n and s[i + 1] in _HEX and s[i + 2] in _HEX:
            hx = s[i + 1 : i + 3]
            c = chr(int(hx, 16))
            out.append(c if c in _UNRESERVED else "%" + hx.upper())
            i += 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _uri_headers(headers: str | None) -> frozenset[tuple[str, str]]:
    """`?a=b&c=d` as an order-free set of (name folded, value) pairs."""
    if not headers:
        return frozenset()
    out = set()
    for h in headers.split("&"):
        eq = h.find("=")
        name, value = (h, "") if eq < 0 else (h[:eq], h[eq + 1 :])
        out.add((_norm_escapes(name).lower(), _norm_escapes(value)))
    return frozenset(out)


def split_params(text: str, sep: str = ";") -> list[str]:
    """Split on `sep` outside double quotes (header params may hold quoted strings)."""
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    cur: list[str] = []
    in_q = False
    esc = False
    for ch in text:
        if esc:
            cur.append(ch)
            esc = False
            continue
        if in_q and ch == "\\":
            cur.append(ch)
            esc = True
            continue
        if ch == '"':
            in_q = not in_q
        elif ch == sep and not in_q:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if in_q:
        raise SipParseError("unterminated quoted string")
    out.append("".join(cur))
    return out


# Parameter names as written (before '=', unstripped) → checked lower-case
# name: tag, branch, rport, transport... repeat on every message.
_PARAM_NAMES: dict[str, str] = {}


def parse_params(parts: list[str]) -> dict[str, str | None]:
    """`name[=value]` pieces into an ordered dict with lower-case names."""
    params: dict[str, str | None] = {}
    for p in parts:
        raw, eq, value = p.partition("=")
        name = _PARAM_NAMES.get(raw)
        if name is not None:
            params[name] = value.strip() if eq else None
            continue
        p = p.strip()
        k = p.find("=")
        name = (p if k < 0 else p[:k]).strip()
        # `;;`, `;=x` and a trailing `;` are not generic-params (RFC 4475 'badinv01').
        if not name or _BAD_PARAM_NAME_RE.search(name):
            raise SipParseError("empty or malformed parameter")
        params[name.lower()] = None if k < 0 else p[k + 1 :].strip()
        if len(_PARAM_NAMES) < 4096:
            _PARAM_NAMES[raw] = name.lower()
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class SipURI:
    """A parsed URI. `raw` is kept so re-serialisation is byte-exact."""

    __slots__ = ("raw", "scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(
        self,
        scheme: str,
        user: str | None,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str | None = None,
        password: str | None = None,
        raw: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers
        self.raw = raw if raw is not None else self._build()

    def _build(self) -> str:
        s = self.scheme + ":"
        if self.user is not None:
            s += self.user
            if self.password is not None:
                s += ":" + self.password
            s += "@"
        s += self.host
        if self.port is not None:
            s += f":{self.port}"
        s += format_params(self.params)
        if self.headers:
            s += "?" + self.headers
        return s

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"SipURI({self.raw!r})"

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    def aor(self) -> str:
        """Address-of-record key: scheme:user@host[:port] with the case-insensitive parts folded.

        `pres:` is treated as `sip:` (RFC 3856 §5), sips stays distinct.
        """
        scheme = "sip" if self.scheme in ("pres", "im") else self.scheme
        if scheme == "tel":
            return "tel:" + self.host
        user = self.user
        if user is not None and "%" in user:  # unquote is interpreted Python: only when needed
            user = unquote(user)
        s = scheme + ":" + (user + "@" if user is not None else "") + self.host.lower()
        if self.port is not None:
            s += f":{self.port}"
        return s

    def equals(self, other: SipURI) -> bool:
        """RFC 3261 §19.1.4 comparison."""
        if self.scheme != other.scheme:
            return False
        if self.scheme == "tel":
            return self.host.replace("-", "").replace(".", "") == other.host.replace("-", "").replace(".", "")
        # userinfo is case-sensitive; unreserved escapes equal their characters.
        if _opt_norm(self.user) != _opt_norm(other.user):
            return False
        if _opt_norm(self.password) != _opt_norm(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = {_norm_escapes(k).lower(): v for k, v in self.params.items()}
        theirs = {_norm_escapes(k).lower(): v for k, v in other.params.items()}
        for name in _STRICT_PARAMS:
            if (name in mine) != (name in theirs):
                return False
        for name, a in mine.items():
            if name in theirs:
                b = theirs[name]
                if _norm_escapes(a or "").lower() != _norm_escapes(b or "").lower():
                    return False
        return _uri_headers(self.headers) == _uri_headers(other.headers)


def _opt_norm(s: str | None) -> str | None:
    return None if s is None else _norm_escapes(s)


_URI_CACHE: dict[str, SipURI] = {}
_URI_CACHE_MAX = 32768
_URI_SEEN: dict[str, int] = {}


def seen_before(seen: dict[str, int], text: str, limit: int) -> bool:
    """Whether `text` was met twice before; counts it if not. Caches keep a
    parsed value only from its third sight: a text met once or twice (a
    one-off watcher, a dialog's Contact in its SUBSCRIBE and un-SUBSCRIBE)
    would otherwise fill the cache with objects the cyclic GC scans, while
    a phone's URIs keep repeating and are cached soon enough. Strings and
    small ints are nothing the GC looks at."""
    n = seen.get(text, 0)
    if n >= 2:
        del seen[text]
        return True
    if len(seen) >= limit:
        seen.clear()
    seen[text] = n + 1
    return False


# The last few URIs parsed, whatever they were: one request names the same
# URI several times (its Request-URI is its To URI and the presentity key; a
# Contact is read when the dialog is made and again when its NOTIFY leaves).
# Emptied when full, so it holds at most _RECENT_MAX short-lived objects.
_RECENT: dict[str, SipURI] = {}
_RECENT_MAX = 256


def parse_uri(text: str) -> SipURI:
    """Parse a URI. Results are cached by text and shared: treat them as read-only."""
    cached = _URI_CACHE.get(text)
    if cached is not None:
        return cached
    uri = _RECENT.get(text)
    if uri is not None:
        return uri
    uri = _parse_uri(text)
    if seen_before(_URI_SEEN, text, 8192):
        if len(_URI_CACHE) >= _URI_CACHE_MAX:
            _URI_CACHE.clear()  # phones repeat the same few URIs; a rare full reset is cheap
        _URI_CACHE[text] = uri
    else:
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[text] = uri
    return uri


_SIP_SCHEMES = frozenset(("sip", "sips", "pres", "im", "tel"))


def _parse_uri(text: str) -> SipURI:
    text = text.strip()
    colon = text.find(":")
    if colon <= 0:
        raise SipParseError(f"invalid URI '{text[:60]}'")
    scheme = text[:colon].lower()
    if scheme not in _SIP_SCHEMES and not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise SipParseError(f"invalid URI scheme in '{text[:60]}'")
    rest = text[colon + 1 :]
    # ASCII (nearly always): no control character and no space is what
    # isprintable() plus one `in` say, without a regular expression.
    if (not text.isprintable() or " " in text) if text.isascii() else _CTL_RE.search(text) is not None:
        raise SipParseError(f"whitespace or control character in URI '{text[:60]}'")
    if scheme not in ("sip", "sips", "pres", "im"):
        if scheme == "tel":
            parts = rest.split(";")
            return SipURI("tel", None, parts[0], None, parse_params(parts[1:]), raw=text)
        # Absolute URI we do not interpret (e.g. http:), kept opaque.
        return SipURI(scheme, None, rest, raw=text)
    # The userinfo may hold '?' and ';' (RFC 3261 user-unreserved) but never a
    # raw '@', so cut it off before looking for headers and parameters.
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        pc = userinfo.find(":")
        if pc >= 0:
            user, password = userinfo[:pc], userinfo[pc + 1 :]
        else:
            user = userinfo
        if not user:
            raise SipParseError(f"empty user part in URI '{text[:60]}'")
    headers = None
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    semi = rest.find(";")
    hostport = rest if semi < 0 else rest[:semi]
    params = parse_params(rest[semi + 1 :].split(";")) if semi >= 0 else {}
    host, port = split_hostport(hostport, text)
    return SipURI(scheme, user, host, port, params, headers, password, raw=text)


# Host names and IPv4 addresses that passed _HOST_RE: hosts repeat far more
# than URIs do (every watcher of a domain, every user behind one proxy).
_GOOD_HOSTS: set[str] = set()


def _good_host(host: str) -> bool:
    if not _HOST_RE.match(host):
        return False
    if len(_GOOD_HOSTS) >= 4096:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(host)
    return True


def split_hostport(hostport: str, context: str = "") -> tuple[str, int | None]:
    if not hostport:
        raise SipParseError(f"missing host in '{(context or hostport)[:60]}'")
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in '{(context or hostport)[:60]}'")
        host = hostport[: end + 1]
        inner = host[1:-1]
        if ":" not in inner or not _IPV6_RE.match(inner):
            raise SipParseError(f"invalid IPv6 reference in '{(context or hostport)[:60]}'")
        tail = hostport[end + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise SipParseError(f"garbage after IPv6 reference in '{(context or hostport)[:60]}'")
        port_s = tail[1:]
    else:
        c = hostport.rfind(":")
        host = hostport if c < 0 else hostport[:c]
        # A ':' left in the host is an IPv6 address without [] (RFC 5118).
        if not host or (host not in _GOOD_HOSTS and not _good_host(host)):
            raise SipParseError(f"invalid host in '{(context or hostport)[:60]}'")
        if c < 0:
            return host, None
        port_s = hostport[c + 1 :]
    if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5 or not 0 < int(port_s) < 65536:
        raise SipParseError(f"invalid port in '{(context or hostport)[:60]}'")
    return host, int(port_s)


class NameAddr:
    """`"Display" <uri>;params` or bare addr-spec; used by From/To/Contact/Route."""

    __slots__ = ("display", "params", "raw", "_uri_text", "_parsed_uri")

    def __init__(self, display: str | None, uri_text: str, params: dict[str, str | None], raw: str) -> None:
        self.display = display
        self._uri_text = uri_text
        self._parsed_uri: SipURI | None = None
        self.params = params
        self.raw = raw

    @property
    def uri(self) -> SipURI:
        if self._parsed_uri is None:
            self._parsed_uri = parse_uri(self._uri_text)
        return self._parsed_uri

    @property
    def uri_text(self) -> str:
        return self._uri_text

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"NameAddr({self.raw!r})"


# `<uri>` or `<uri>;tag=x`: what From, To and Contact nearly always are.
_NAME_ADDR_PLAIN = re.compile(r"<([^<>\s\"]*:[^<>\s\"]*)>(?:;([A-Za-z0-9.!%*_+`'~-]+)=([^;\s\"]+))?\Z")


# `<uri>` without parameters (a To before the dialog, most Contacts) repeats
# per presentity: shared, read-only, like parse_uri's results.
_PLAIN_NA_CACHE: dict[str, NameAddr] = {}
_PLAIN_NA_SEEN: dict[str, int] = {}


def _plain_parts(raw: str) -> tuple[str, str, str] | None:
    """`<uri>` or `<uri>;name=value` split without the regular expression, for
    the ASCII inputs that are plainly of that shape: a subset of what
    _NAME_ADDR_PLAIN accepts, with the same groups ("" for no parameter).
    None leaves the decision to the expression."""
    if raw[:1] != "<" or not raw.isascii():
        return None
    gt = raw.find(">")
    if gt < 0:
        return None
    uri = raw[1:gt]
    # isprintable() on ASCII: no control character; with no space, no whitespace.
    if ":" not in uri or "<" in uri or '"' in uri or " " in uri or not uri.isprintable():
        return None
    if gt + 1 == len(raw):
        return uri, "", ""
    if raw[gt + 1] != ";":
        return None
    eq = raw.find("=", gt + 2)
    if eq < 0:
        return None
    name = raw[gt + 2 : eq]
    value = raw[eq + 1 :]
    if not name.isalnum() or not value or ";" in value or '"' in value or " " in value or not value.isprintable():
        return None
    return uri, name, value


def parse_name_addr(text: str) -> NameAddr:
    cached = _PLAIN_NA_CACHE.get(text)
    if cached is not None:
        return cached
    raw = text.strip()
    parts = _plain_parts(raw)
    if parts is None:
        m = _NAME_ADDR_PLAIN.match(raw)
        if m is not None:
            parts = (m.group(1), m.group(2) or "", m.group(3) or "")
    if parts is not None:
        pname = parts[1]
        if pname:
            return NameAddr(None, parts[0], {pname.lower(): parts[2]}, raw)
        na = NameAddr(None, parts[0], {}, raw)
        if seen_before(_PLAIN_NA_SEEN, text, 4096):
            if len(_PLAIN_NA_CACHE) >= 4096:
                _PLAIN_NA_CACHE.clear()
            _PLAIN_NA_CACHE[text] = na
        return na
    if not raw:
        raise SipParseError("empty address")
    lt = raw.find("<")
    if raw[0] == '"':
        # quoted display name, with escapes
        i = 1
        n = len(raw)
        buf = []
        while i < n:
            ch = raw[i]
            if ch == "\\" and i + 1 < n:
                buf.append(raw[i + 1])
                i += 2
                continue
            if ch == '"':
                break
            buf.append(ch)
            i += 1
        else:
            raise SipParseError("unterminated display name")
        display: str | None = "".join(buf)
        lt = raw.find("<", i + 1)
        if lt < 0:
            raise SipParseError("display name without <uri>")
    elif lt >= 0:
        display = raw[:lt].strip() or None
        # Unquoted display names are tokens (RFC 4475 'baddn').
        # Non-ASCII is tolerated: many UAs send UTF-8 names unquoted.
        if display is not None and any(c in _DISPLAY_SEPARATORS for c in display):
            raise SipParseError(f"display name must be quoted: '{display[:40]}'")
    else:
        display = None
    if lt >= 0:
        gt = raw.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <uri>")
        uri_text = raw[lt + 1 : gt].strip()
        rest = raw[gt + 1 :].strip()
        if rest and rest[0] != ";":
            raise SipParseError(f"garbage after <uri>: '{rest[:40]}'")
        params = parse_params(split_params(rest[1:])) if rest else {}
    else:
        # addr-spec: params after the URI belong to the header, not the URI.
        semi = raw.find(";")
        if semi >= 0:
            uri_text = raw[:semi].strip()
            params = parse_params(split_params(raw[semi + 1 :]))
        else:
            uri_text = raw
            params = {}
        # A URI with ',', '?' or ';' must be in name-addr form (RFC 3261 §20.10).
        if any(c in uri_text for c in " \t,?"):
            raise SipParseError(f"invalid address '{raw[:60]}' (URI must be enclosed in <>)")
    if not uri_text or ":" not in uri_text:
        raise SipParseError(f"invalid URI in address '{raw[:60]}'")
    return NameAddr(display, uri_text, params, raw)
