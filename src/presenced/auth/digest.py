"""SIP digest authentication (RFC 3261 §22, RFC 2617, RFC 7616 / RFC 8760), sans-I/O.

The server side of `WWW-Authenticate` / `Authorization`: MD5 and SHA-256,
`qop=auth` only. Nothing here touches a socket, a clock or a logger: `now` is
passed in and every decision is returned as an `AuthResult` for the caller to
act on and log.

Nonces
    A nonce is ``base64url(timestamp_ms[8] || random[12] || mac[16])`` where
    ``mac`` is HMAC-SHA256 (truncated) over the realm, the timestamp and the
    random bytes, keyed with the authenticator's secret. It is unguessable and
    self-validating: checking one needs the secret, not a table of issued
    nonces, so challenges cost no memory and several instances sharing a
    secret accept each other's nonces. `now` should then be wall-clock time
    (``time.time()``); a monotonic clock works for a single process but makes
    nonces issued before a restart look expired or from the future (both are
    answered with ``stale=true``, so phones simply retry).

Replay protection
    The only state is a bounded LRU table nonce -> highest ``nc`` accepted
    (`max_nonces` entries). An entry is written only after the response has
    verified, so unauthenticated traffic cannot fill it. When an entry is
    evicted, the issue time of its nonce becomes a floor: a nonce issued at or
    before the floor that is not in the table may have been used already, so
    it is answered with ``stale=true`` (the phone re-authenticates against a
    fresh nonce without prompting the user) instead of being trusted again.

Rate limiting
    Failures are counted per `source` (an IP string) in a sliding window of
    `failure_window` seconds. When a source reaches `max_failures_per_source`
    failures it is locked for `lockout` seconds: `verify` then returns
    ``rate_limited=True`` immediately, without parsing, looking the user up or
    hashing. Only rejected Digest credentials *for this realm* count (wrong
    password, unknown user, forged nonce, replay, URI mismatch, malformed or
    missing fields); a request without credentials, credentials for another
    realm and a stale nonce with a valid digest do not. Successes never reset
    a source's counter, so one valid account cannot be used to keep guessing
    another from the same address; each source is counted independently.

    The caller should answer a rate-limited request with **403 Forbidden**
    (no challenge, so the phone stops), or 503 Service Unavailable with
    ``Retry-After: ceil(result.retry_after)`` if it prefers a retry. Do not
    use 429: in SIP that is "Provide Referrer Identity" (RFC 3892).

Timing
    Responses are compared with `hmac.compare_digest`. For an unknown user (or
    credentials with no usable secret for the algorithm) the same hashes are
    computed against a random dummy password and compared, so the verify path
    costs the same as for a known user with a password; the time the caller's
    `lookup` takes (a database query) is outside this module's control. The
    `reason` differs ("unknown user" vs "wrong password") because it is meant
    for logs: never put it on the wire, answer both the same way.

Not thread-safe: use one authenticator per event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from presenced.sip.errors import SipParseError
from presenced.sip.uri import parse_uri

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

#: Supported algorithm tokens (canonical spelling) and their hex digest length.
ALGORITHMS: dict[str, int] = {"SHA-256": 64, "MD5": 32}

_NONCE_TAG = b"presenced/digest-nonce/v1\x00"
_OPAQUE_TAG = b"presenced/digest-opaque/v1\x00"
_NONCE_TS = 8
_NONCE_RAND = 12
_NONCE_MAC = 16
_NONCE_CHARS = 4 * (_NONCE_TS + _NONCE_RAND + _NONCE_MAC) // 3  # 36 bytes -> 48 chars, no padding
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{%d}" % _NONCE_CHARS)
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_TOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class AuthParseError(ValueError):
    """A malformed credentials or challenge header."""


# --------------------------------------------------------------------------- hashing


def _canon_algorithm(algorithm: str) -> str | None:
    a = algorithm.strip().upper()
    return a if a in ALGORITHMS else None


def _h(algorithm: str, data: str) -> str:
    raw = data.encode("utf-8", "surrogateescape")
    if algorithm == "MD5":
        return hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if algorithm == "SHA-256":
        return hashlib.sha256(raw).hexdigest()
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """HA1 = H(username ":" realm ":" password), lower-case hex (RFC 2617 §3.2.2.2)."""
    alg = _canon_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(alg, f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    *,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = "auth",
    algorithm: str = "MD5",
) -> str:
    """The request-digest (RFC 2617 §3.2.2.1) from a precomputed HA1.

    With ``qop="auth"``: H(HA1:nonce:nc:cnonce:qop:H(method:uri)); with
    ``qop=None`` the RFC 2069 form H(HA1:nonce:H(method:uri)). `nc` and
    `cnonce` are used exactly as sent (the strings, not their values).
    """
    alg = _canon_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha2 = _h(alg, f"{method}:{uri}")
    ha1 = ha1.lower()
    if qop is None:
        return _h(alg, f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise ValueError("qop=auth needs nc and cnonce")
    return _h(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------- header syntax


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_auth_header(scheme: str, params: Iterable[tuple[str, str, bool]]) -> str:
    """`scheme name=value, name="value", ...`; each param is (name, value, quoted)."""
    return scheme + " " + ", ".join(f"{n}={_quote(v) if q else v}" for n, v, q in params)


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Parse a credentials or challenge value into (scheme, {lower-case name: value}).

    Quoted strings are unescaped; whether a value was quoted is not kept
    (clients disagree on quoting ``qop``, ``nc`` and ``algorithm``). A
    parameter given twice, a missing ``=`` or an unterminated quote raises
    `AuthParseError`. Empty list elements (``a=1, , b=2``) are tolerated.
    """
    s = value.strip()
    n = len(s)
    i = 0
    while i < n and s[i] not in " \t":
        i += 1
    scheme = s[:i]
    if not _TOKEN_RE.fullmatch(scheme):
        raise AuthParseError("missing or malformed auth scheme")
    params: dict[str, str] = {}
    pos = i
    while True:
        while pos < n and s[pos] in " \t,":
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and s[pos] not in "= \t,\"":
            pos += 1
        name = s[start:pos].lower()
        if not _TOKEN_RE.fullmatch(name):
            raise AuthParseError(f"malformed auth-param name at offset {start}")
        while pos < n and s[pos] in " \t":
            pos += 1
        if pos >= n or s[pos] != "=":
            raise AuthParseError(f"auth-param '{name[:30]}' without a value")
        pos += 1
        while pos < n and s[pos] in " \t":
            pos += 1
        if pos < n and s[pos] == '"':
            pos += 1
            buf: list[str] = []
            while True:
                if pos >= n:
                    raise AuthParseError("unterminated quoted string")
                ch = s[pos]
                if ch == "\\" and pos + 1 < n:
                    buf.append(s[pos + 1])
                    pos += 2
                    continue
                if ch == '"':
                    pos += 1
                    break
                buf.append(ch)
                pos += 1
            val = "".join(buf)
        else:
            start = pos
            while pos < n and s[pos] not in ", \t\"":
                pos += 1
            val = s[start:pos]
            if not val:
                raise AuthParseError(f"auth-param '{name[:30]}' with an empty value")
        while pos < n and s[pos] in " \t":
            pos += 1
        if pos < n and s[pos] != ",":
            raise AuthParseError(f"garbage after auth-param '{name[:30]}'")
        if name in params:
            raise AuthParseError(f"auth-param '{name[:30]}' given twice")
        params[name] = val
    return scheme, params


# --------------------------------------------------------------------------- public data


@dataclass(frozen=True)
class Credentials:
    """A subscriber's secret, as stored in Kamailio's `subscriber` table.

    `ha1` is MD5(username:realm:password) and `ha1b` MD5(username@domain:realm:
    password) (Kamailio computes both with realm = domain); `ha1_sha256` is
    SHA-256(username:realm:password). Stored hashes must have been computed
    with the realm this server challenges with. When `password` is set every
    HA1 is computed from it (with the realm and the username exactly as the
    phone sent them), so the stored columns are only needed without it.
    """

    username: str
    domain: str
    password: str | None = None
    ha1: str | None = None
    ha1b: str | None = None
    ha1_sha256: str | None = None

    def ha1_for(self, digest_username: str, realm: str, algorithm: str) -> str | None:
        """The HA1 matching what a phone sending `digest_username` hashed; None if unknown.

        A username with '@' (the user@domain form) uses `ha1b`; a stored hash
        of the wrong length for the algorithm is ignored.
        """
        alg = _canon_algorithm(algorithm)
        if alg is None:
            return None
        if self.password is not None:
            return compute_ha1(digest_username, realm, self.password, alg)
        if alg == "MD5":
            stored = self.ha1b if "@" in digest_username else self.ha1
        else:
            stored = self.ha1_sha256 if "@" not in digest_username else None
        if stored is None:
            return None
        stored = stored.strip().lower()
        if len(stored) != ALGORITHMS[alg] or not _HEX_RE.fullmatch(stored):
            return None
        return stored


@dataclass(frozen=True)
class AuthResult:
    """Outcome of `DigestAuthenticator.verify`.

    `ok`: the credentials are valid; `username`/`domain` identify the
    subscriber (set, when known, on failures too, for logging). `stale`: the
    digest was right but the nonce expired; challenge again with
    ``stale=true``. `rate_limited`: the source is locked out (see module
    doc); `retry_after` is the remaining lockout in seconds. `reason` is a
    short human-readable cause for logs, never for the wire.
    """

    ok: bool
    username: str | None = None
    domain: str | None = None
    stale: bool = False
    reason: str = ""
    rate_limited: bool = False
    retry_after: float | None = None


class _RequestLike(Protocol):
    method: str
    uri_text: str

    def get_all(self, name: str) -> list[str]: ...


Lookup = Callable[[str, str], Credentials | None]


class _Source:
    __slots__ = ("failures", "locked_until")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()
        self.locked_until = 0.0


# --------------------------------------------------------------------------- authenticator


class DigestAuthenticator:
    """Issues digest challenges and verifies credentials for one realm (see module doc).

    `realm` is the default; `challenge` and `verify` take a per-call `realm`
    for servers whose realm is the domain of each request. Nonces are bound to
    the realm they were issued for.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Iterable[str] = ("MD5",),
        nonce_ttl: float = 300.0,
        max_failures_per_source: int = 10,
        failure_window: float = 60.0,
        lockout: float = 60.0,
        max_nonces: int = 100_000,
        max_sources: int = 100_000,
    ) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes (use secrets.token_bytes(32))")
        algs: list[str] = []
        for a in algorithms:
            c = _canon_algorithm(a)
            if c is None:
                raise ValueError(f"unsupported digest algorithm {a!r}")
            if c not in algs:
                algs.append(c)
        if not algs:
            raise ValueError("at least one digest algorithm is required")
        # In the caller's order: RFC 8760 §2.4 offers the preferred one first.
        if nonce_ttl <= 0 or failure_window <= 0 or lockout < 0:
            raise ValueError("nonce_ttl and failure_window must be > 0, lockout >= 0")
        if max_nonces < 1 or max_sources < 1:
            raise ValueError("max_nonces and max_sources must be >= 1")
        self.realm = realm
        self._secret = bytes(secret)
        self.algorithms: tuple[str, ...] = tuple(algs)
        self.nonce_ttl = float(nonce_ttl)
        self.max_failures_per_source = int(max_failures_per_source)
        self.failure_window = float(failure_window)
        self.lockout = float(lockout)
        self.max_nonces = int(max_nonces)
        self.max_sources = int(max_sources)
        # nonce -> (issue time in seconds, highest nc accepted); LRU order.
        self._nc: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._nc_floor = float("-inf")  # latest issue time of an evicted nonce
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._dummy_password = secrets.token_hex(16)

    # -- nonces --------------------------------------------------------------
    def _mac(self, realm: str, raw: bytes) -> bytes:
        msg = _NONCE_TAG + realm.encode("utf-8", "surrogateescape") + b"\x00" + raw
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_NONCE_MAC]

    def make_nonce(self, now: float, realm: str | None = None) -> str:
        realm = self.realm if realm is None else realm
        ts = max(0, int(now * 1000))
        raw = struct.pack(">Q", ts) + secrets.token_bytes(_NONCE_RAND)
        return base64.urlsafe_b64encode(raw + self._mac(realm, raw)).decode("ascii")

    def nonce_time(self, nonce: str, realm: str | None = None) -> float | None:
        """Issue time (seconds) of a nonce this authenticator minted for `realm`, else None."""
        realm = self.realm if realm is None else realm
        if not _NONCE_RE.fullmatch(nonce):
            return None
        blob = base64.urlsafe_b64decode(nonce)
        raw, mac = blob[: _NONCE_TS + _NONCE_RAND], blob[_NONCE_TS + _NONCE_RAND :]
        if not hmac.compare_digest(mac, self._mac(realm, raw)):
            return None
        return struct.unpack(">Q", raw[:_NONCE_TS])[0] / 1000.0

    def _opaque(self, realm: str) -> str:
        msg = _OPAQUE_TAG + realm.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _expired(self, issued: float, now: float) -> bool:
        # A nonce "from the future" means the clock went back: treat as stale.
        return now - issued > self.nonce_ttl or issued > now + 1.0

    # -- challenge -------------------------------------------------------------
    def challenge(
        self, now: float, *, stale: bool = False, realm: str | None = None, proxy: bool = False
    ) -> list[tuple[str, str]]:
        """Header (name, value) pairs for a 401 (or a 407 with `proxy=True`).

        One challenge per configured algorithm, in the configured order (RFC 8760 §2.4),
        sharing one fresh nonce and the realm's opaque; ``stale=true`` is added
        when the previous request failed only because its nonce expired.
        """
        realm = self.realm if realm is None else realm
        nonce = self.make_nonce(now, realm)
        opaque = self._opaque(realm)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        out = []
        for alg in self.algorithms:
            params = [
                ("realm", realm, True),
                ("nonce", nonce, True),
                ("opaque", opaque, True),
                ("qop", "auth", True),
                ("algorithm", alg, False),
            ]
            if stale:
                params.append(("stale", "true", False))
            out.append((name, format_auth_header("Digest", params)))
        return out

    # -- rate limiting ---------------------------------------------------------
    def _lock_remaining(self, source: str, now: float) -> float | None:
        st = self._sources.get(source)
        if st is None or st.locked_until <= now:
            return None
        return st.locked_until - now

    def _record_failure(self, source: str, now: float) -> None:
        if self.max_failures_per_source <= 0:
            return
        st = self._sources.get(source)
        if st is None:
            st = self._sources[source] = _Source()
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        horizon = now - self.failure_window
        f = st.failures
        while f and f[0] <= horizon:
            f.popleft()
        f.append(now)
        if len(f) >= self.max_failures_per_source:
            st.locked_until = now + self.lockout
            f.clear()

    def locked_out(self, source: str, now: float) -> bool:
        return self._lock_remaining(source, now) is not None

    def failures(self, source: str, now: float) -> int:
        """Failures counted for `source` in the current window (0 while locked out)."""
        st = self._sources.get(source)
        if st is None:
            return 0
        horizon = now - self.failure_window
        return sum(1 for t in st.failures if t > horizon)

    # -- replay table ----------------------------------------------------------
    def _remember_nc(self, nonce: str, issued: float, nc: int) -> None:
        self._nc[nonce] = (issued, nc)
        self._nc.move_to_end(nonce)
        while len(self._nc) > self.max_nonces:
            _, (old_issued, _) = self._nc.popitem(last=False)
            if old_issued > self._nc_floor:
                self._nc_floor = old_issued

    # -- verification ----------------------------------------------------------
    def claimed_user(self, request: _RequestLike, realm: str | None = None) -> tuple[str, str] | None:
        """(user, domain) that `verify` would look up for this request, without checking anything."""
        realm = self.realm if realm is None else realm
        params, _ = self._select(request, realm, None)
        username = params.get("username") if params is not None else None
        return _split_username(username, realm) if username else None

    def _select(self, request: _RequestLike, realm: str, header: str | None) -> tuple[dict[str, str] | None, str]:
        names = (header,) if header is not None else ("authorization", "proxy-authorization")
        values: list[str] = []
        for h in names:
            values.extend(request.get_all(h))
        if not values:
            return None, "no credentials"
        reason = "no credentials for this realm"
        for v in values:
            try:
                scheme, params = parse_auth_header(v)
            except AuthParseError as e:
                reason = f"malformed credentials: {e}"
                continue
            if scheme.lower() != "digest":
                reason = f"unsupported auth scheme {scheme[:20]}"
                continue
            if params.get("realm") == realm:
                return params, ""
        return None, reason

    def verify(
        self,
        request: _RequestLike,
        now: float,
        lookup: Lookup,
        source: str,
        *,
        realm: str | None = None,
        header: str | None = None,
    ) -> AuthResult:
        """Check the request's Digest credentials for the realm; see `AuthResult`.

        Credentials are taken from Authorization, then Proxy-Authorization
        (or only from `header` when given): the first Digest credentials whose
        realm is ours. `lookup(user, domain)` is called with the digest
        username split at its last '@' (user@domain form) or with the realm as
        domain; it may return None for an unknown user. Exceptions it raises
        propagate.
        """
        realm = self.realm if realm is None else realm
        remaining = self._lock_remaining(source, now)
        if remaining is not None:
            return AuthResult(False, reason="too many failures from source", rate_limited=True,
                              retry_after=remaining)
        params, why = self._select(request, realm, header)
        if params is None:
            return AuthResult(False, reason=why)

        username = params.get("username")
        user, domain = _split_username(username, realm) if username else (None, None)

        def fail(reason: str) -> AuthResult:
            self._record_failure(source, now)
            return AuthResult(False, user, domain, reason=reason)

        for field in ("username", "nonce", "uri", "response"):
            if not params.get(field):
                return fail(f"missing {field}")
        assert username is not None and user is not None and domain is not None
        if "userhash" in params and params["userhash"].lower() == "true":
            return fail("userhash not supported")
        alg = _canon_algorithm(params.get("algorithm", "MD5"))
        if alg is None or alg not in self.algorithms:
            return fail("unsupported algorithm")
        qop = params.get("qop")
        if qop is None:
            return fail("missing qop")
        if qop.lower() != "auth":
            return fail("unsupported qop")
        nc_s = params.get("nc")
        cnonce = params.get("cnonce")
        if not nc_s:
            return fail("missing nc")
        if not cnonce:
            return fail("missing cnonce")
        if len(nc_s) > 8 or not _HEX_RE.fullmatch(nc_s) or int(nc_s, 16) == 0:
            return fail("malformed nc")
        nc = int(nc_s, 16)
        nonce = params["nonce"]
        issued = self.nonce_time(nonce, realm)
        if issued is None:
            return fail("invalid nonce")
        opaque = params.get("opaque")
        if opaque is not None and not hmac.compare_digest(
            opaque.encode("utf-8", "surrogateescape"), self._opaque(realm).encode("ascii")
        ):
            return fail("opaque mismatch")
        if not _uri_matches(params["uri"], request.uri_text):
            return fail("uri mismatch")

        stale_reason = ""
        if self._expired(issued, now):
            stale_reason = "stale nonce"
        else:
            seen = self._nc.get(nonce)
            if seen is not None:
                if nc <= seen[1]:
                    return fail("replayed nc")
            elif issued <= self._nc_floor:
                stale_reason = "nonce forgotten"

        creds = lookup(user, domain)
        ha1 = creds.ha1_for(username, realm, alg) if creds is not None else None
        usable = ha1 is not None
        if ha1 is None:
            # Same hashing work as the password path; the result cannot match.
            ha1 = compute_ha1(username, realm, self._dummy_password, alg)
        expected = compute_response(ha1, nonce, request.method, params["uri"], nc=nc_s,
                                    cnonce=cnonce, qop=qop, algorithm=alg)
        got = params["response"].lower().encode("utf-8", "surrogateescape")
        match = hmac.compare_digest(expected.encode("ascii"), got)
        if creds is None:
            return fail("unknown user")
        if not usable:
            return fail("no usable secret for algorithm")
        if not match:
            return fail("wrong password")
        if stale_reason:
            return AuthResult(False, creds.username, creds.domain, stale=True, reason=stale_reason)
        self._remember_nc(nonce, issued, nc)
        return AuthResult(True, creds.username, creds.domain, reason="ok")

    # -- housekeeping ------------------------------------------------------------
    def forget_expired(self, now: float) -> None:
        """Drop replay entries of expired nonces and idle failure counters."""
        dead = [k for k, (issued, _) in self._nc.items() if self._expired(issued, now)]
        for k in dead:
            del self._nc[k]
        horizon = now - self.failure_window
        idle = []
        for src, st in self._sources.items():
            f = st.failures
            while f and f[0] <= horizon:
                f.popleft()
            if not f and st.locked_until <= now:
                idle.append(src)
        for src in idle:
            del self._sources[src]


def _split_username(username: str, realm: str) -> tuple[str, str]:
    at = username.rfind("@")
    if 0 < at < len(username) - 1:
        return username[:at], username[at + 1 :]
    return username, realm


def _uri_matches(digest_uri: str, request_uri: str) -> bool:
    """The digest-uri names the Request-URI (RFC 3261 §22.4): equal text, or equal URIs."""
    if digest_uri == request_uri:
        return True
    try:
        return parse_uri(digest_uri).equals(parse_uri(request_uri))
    except SipParseError:
        return False
