"""Digest authentication (RFC 2617, RFC 7616 / RFC 8760, RFC 3261 §22): presenced.auth."""

from __future__ import annotations

import hashlib

import pytest

import presenced.auth.digest as digest_mod
from presenced.auth import (
    AuthParseError,
    Credentials,
    DigestAuthenticator,
    compute_ha1,
    compute_response,
    parse_auth_header,
)

from digestref import H, authorization, parse_challenge, request

REALM = "example.com"
SECRET = b"s" * 32
URI = "sip:bob@example.com"
T0 = 1_700_000_000.0

USERS = {
    ("alice", REALM): Credentials("alice", REALM, password="wonderland"),
    # Kamailio subscriber rows without the clear-text password.
    ("carol", REALM): Credentials(
        "carol",
        REALM,
        ha1=H("MD5", f"carol:{REALM}:s3cret"),
        ha1b=H("MD5", f"carol@{REALM}:{REALM}:s3cret"),
        ha1_sha256=H("SHA-256", f"carol:{REALM}:s3cret"),
    ),
}


class Lookup:
    def __init__(self, users=USERS):
        self.users = users
        self.calls: list[tuple[str, str]] = []

    def __call__(self, user: str, domain: str):
        self.calls.append((user, domain))
        return self.users.get((user, domain))


@pytest.fixture
def auth() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, algorithms=("SHA-256", "MD5"), max_failures_per_source=3,
                               failure_window=60, lockout=30)


def chal_for(auth: DigestAuthenticator, now: float = T0, alg: str = "MD5") -> dict[str, str]:
    for _, value in auth.challenge(now):
        c = parse_challenge(value)
        if c["algorithm"] == alg:
            return c
    raise AssertionError(f"no {alg} challenge")


def signed(auth, *, user="alice", password="wonderland", alg="MD5", now=T0, uri=URI, method="SUBSCRIBE", **kw):
    chal = chal_for(auth, now, alg)
    return chal, request(method, uri, authorization(chal, user, password, method, kw.pop("digest_uri", uri), **kw))


# --------------------------------------------------------------------------- vectors


def test_rfc2617_section_3_5_vector():
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert ha1 == hashlib.md5(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    resp = compute_response(
        ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html",
        nc="00000001", cnonce="0a4f113b", qop="auth", algorithm="MD5",
    )
    assert resp == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    "alg, expected",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(alg, expected):
    ha1 = compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", alg)
    resp = compute_response(
        ha1, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "GET", "/dir/index.html",
        nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop="auth", algorithm=alg,
    )
    assert resp == expected


def test_rfc2069_form_without_qop():
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    want = hashlib.md5(f"{ha1}:abc:{ha2}".encode()).hexdigest()
    assert compute_response(ha1, "abc", "GET", "/dir/index.html", qop=None) == want


def test_low_level_argument_errors():
    with pytest.raises(ValueError):
        compute_ha1("a", "r", "p", "SHA-1")
    with pytest.raises(ValueError):
        compute_response("00", "n", "GET", "/", nc="00000001", cnonce="c", qop="auth-int")
    with pytest.raises(ValueError):
        compute_response("00", "n", "GET", "/")  # qop=auth without nc/cnonce


# --------------------------------------------------------------------------- challenge


def test_challenge_headers_parse_back(auth):
    hdrs = auth.challenge(T0)
    assert [n for n, _ in hdrs] == ["WWW-Authenticate", "WWW-Authenticate"]
    chals = [parse_challenge(v) for _, v in hdrs]
    assert [c["algorithm"] for c in chals] == ["SHA-256", "MD5"]  # RFC 8760: as configured, preferred first
    for c in chals:
        assert c["realm"] == REALM
        assert c["qop"] == "auth"
        assert c["nonce"] and c["opaque"]
        assert "stale" not in c
    assert chals[0]["nonce"] == chals[1]["nonce"]
    # and the module's own parser agrees
    scheme, params = parse_auth_header(hdrs[0][1])
    assert scheme == "Digest" and params["realm"] == REALM and params["nonce"] == chals[0]["nonce"]


def test_challenge_nonces_are_fresh_and_stale_flag(auth):
    a = parse_challenge(auth.challenge(T0)[0][1])
    b = parse_challenge(auth.challenge(T0)[0][1])
    assert a["nonce"] != b["nonce"]
    s = [parse_challenge(v) for _, v in auth.challenge(T0, stale=True)]
    assert all(c["stale"] == "true" for c in s)


def test_challenge_algorithm_selection_and_proxy():
    a = DigestAuthenticator(REALM, SECRET, algorithms=("md5", "sha-256"))
    assert a.algorithms == ("MD5", "SHA-256")  # the configured preference
    assert DigestAuthenticator(REALM, SECRET).algorithms == ("MD5",)  # Kamailio's, and what libre accepts
    hdrs = DigestAuthenticator(REALM, SECRET, algorithms=("MD5",)).challenge(T0, proxy=True)
    assert len(hdrs) == 1 and hdrs[0][0] == "Proxy-Authenticate"
    assert parse_challenge(hdrs[0][1])["algorithm"] == "MD5"


def test_realm_with_quotes_is_escaped():
    a = DigestAuthenticator('we "quote"', SECRET)
    c = parse_challenge(a.challenge(T0)[0][1])
    assert c["realm"] == 'we "quote"'


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": b"short"}, {"algorithms": ("SHA-1",)}, {"algorithms": ()}, {"nonce_ttl": 0}],
)
def test_constructor_validation(kwargs):
    args = {"realm": REALM, "secret": SECRET} | kwargs
    with pytest.raises(ValueError):
        DigestAuthenticator(args.pop("realm"), args.pop("secret"), **args)


# --------------------------------------------------------------------------- success paths


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_success_with_password(auth, alg):
    lookup = Lookup()
    _, req = signed(auth, alg=alg)
    r = auth.verify(req, T0 + 1, lookup, "192.0.2.1")
    assert r.ok and not r.stale and not r.rate_limited
    assert (r.username, r.domain) == ("alice", REALM)
    assert lookup.calls == [("alice", REALM)]


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_success_with_stored_ha1_only(auth, alg):
    _, req = signed(auth, user="carol", password="s3cret", alg=alg)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert r.ok and r.username == "carol"


def test_success_with_ha1b_user_at_domain(auth):
    lookup = Lookup()
    _, req = signed(auth, user=f"carol@{REALM}", password="s3cret")
    r = auth.verify(req, T0, lookup, "192.0.2.1")
    assert r.ok, r.reason
    assert lookup.calls == [("carol", REALM)]
    assert (r.username, r.domain) == ("carol", REALM)


def test_user_at_domain_with_password(auth):
    _, req = signed(auth, user=f"alice@{REALM}", password="wonderland", alg="SHA-256")
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_ha1_only_row_cannot_do_sha256_for_user_at_domain(auth):
    _, req = signed(auth, user=f"carol@{REALM}", password="s3cret", alg="SHA-256")
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "no usable secret for algorithm"


def test_stored_hash_of_wrong_shape_is_ignored(auth):
    users = {("dave", REALM): Credentials("dave", REALM, ha1="not-hex")}
    _, req = signed(auth, user="dave", password="x")
    r = auth.verify(req, T0, Lookup(users), "192.0.2.1")
    assert not r.ok and r.reason == "no usable secret for algorithm"


def test_proxy_authorization_is_accepted(auth):
    chal = chal_for(auth)
    req = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI), header="Proxy-Authorization")
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_picks_credentials_for_our_realm_among_several(auth):
    chal = chal_for(auth)
    other = dict(chal, realm="upstream.example.net")
    req = request(auth=[
        authorization(other, "alice", "other", "SUBSCRIBE", URI),
        'Basic YWxpY2U6d29uZGVybGFuZA==',
        authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI),
    ])
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_algorithm_omitted_means_md5(auth):
    _, req = signed(auth, drop=("algorithm",))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_uppercase_hex_response_and_quoted_nc_are_tolerated(auth):
    chal = chal_for(auth)
    good = authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI)
    resp = parse_auth_header(good)[1]["response"]
    req = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI,
                                     override={"response": f'"{resp.upper()}"', "nc": '"00000001"'}))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_equivalent_request_uri_matches(auth):
    chal = chal_for(auth)
    req = request(uri="sip:bob@EXAMPLE.COM",
                  auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", "sip:bob@example.com"))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


def test_per_call_realm(auth):
    hdr = auth.challenge(T0, realm="other.org")[1][1]
    chal = parse_challenge(hdr)
    users = {("eve", "other.org"): Credentials("eve", "other.org", password="pw")}
    req = request(auth=authorization(chal, "eve", "pw", "SUBSCRIBE", URI))
    assert auth.verify(req, T0, Lookup(users), "192.0.2.1", realm="other.org").ok
    # the same credentials are not for the default realm, and the nonce is realm-bound
    r = auth.verify(req, T0, Lookup(users), "192.0.2.1")
    assert not r.ok
    moved = request(auth=authorization(dict(chal, realm=REALM), "eve", "pw", "SUBSCRIBE", URI))
    r = auth.verify(moved, T0, Lookup({("eve", REALM): Credentials("eve", REALM, password="pw")}), "192.0.2.9")
    assert not r.ok and r.reason == "invalid nonce"


# --------------------------------------------------------------------------- failures


def test_wrong_password(auth):
    _, req = signed(auth, password="guess")
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and not r.stale and r.reason == "wrong password"
    assert r.username == "alice"


def test_wrong_realm_is_not_our_credentials(auth):
    chal = dict(chal_for(auth), realm="evil.example.net")
    req = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI))
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "no credentials for this realm"
    assert auth.failures("192.0.2.1", T0) == 0  # answered with a challenge, not counted


def test_no_credentials(auth):
    r = auth.verify(request(), T0, Lookup(), "192.0.2.1")
    assert not r.ok and not r.stale and r.reason == "no credentials"
    assert auth.failures("192.0.2.1", T0) == 0


def test_nonce_from_another_secret(auth):
    other = DigestAuthenticator(REALM, b"t" * 32)
    _, req = signed(other)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and not r.stale and r.reason == "invalid nonce"


@pytest.mark.parametrize("nonce", ["dcd98b7102dd2f0e8b11d0f600bfb0c093", "x" * 48, "A" * 48, ""])
def test_garbage_nonce(auth, nonce):
    chal = dict(chal_for(auth), nonce=nonce)
    req = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI))
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason in ("invalid nonce", "missing nonce")


def test_tampered_nonce(auth):
    chal = chal_for(auth)
    n = chal["nonce"]
    flipped = n[:5] + ("A" if n[5] != "A" else "B") + n[6:]
    req = request(auth=authorization(dict(chal, nonce=flipped), "alice", "wonderland", "SUBSCRIBE", URI))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").reason == "invalid nonce"


def test_expired_nonce_is_stale_when_digest_is_right(auth):
    _, req = signed(auth, now=T0)
    r = auth.verify(req, T0 + auth.nonce_ttl + 1, Lookup(), "192.0.2.1")
    assert not r.ok and r.stale and r.reason == "stale nonce"
    assert r.username == "alice"
    assert auth.failures("192.0.2.1", T0) == 0  # stale is not a failure
    # still fine just before expiry
    _, req = signed(auth, now=T0)
    assert auth.verify(req, T0 + auth.nonce_ttl - 1, Lookup(), "192.0.2.1").ok


def test_expired_nonce_with_wrong_password_is_not_stale(auth):
    _, req = signed(auth, now=T0, password="guess")
    r = auth.verify(req, T0 + auth.nonce_ttl + 1, Lookup(), "192.0.2.1")
    assert not r.ok and not r.stale and r.reason == "wrong password"


def test_nonce_from_the_future_is_stale(auth):
    _, req = signed(auth, now=T0 + 100)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.stale


def test_replayed_nc_fails_and_increasing_nc_succeeds(auth):
    chal = chal_for(auth)

    def req(nc: str, cnonce: str = "0a4f113b"):
        return request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI, nc=nc, cnonce=cnonce))

    assert auth.verify(req("00000001"), T0, Lookup(), "192.0.2.1").ok
    r = auth.verify(req("00000001"), T0 + 1, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "replayed nc"
    assert auth.verify(req("00000002", "c2"), T0 + 2, Lookup(), "192.0.2.1").ok
    assert auth.verify(req("00000005", "c5"), T0 + 3, Lookup(), "192.0.2.1").ok
    r = auth.verify(req("00000004", "c4"), T0 + 4, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "replayed nc"
    assert auth.verify(req("0000000a", "ca"), T0 + 5, Lookup(), "192.0.2.1").ok


def test_failed_attempt_does_not_burn_the_nonce(auth):
    chal = chal_for(auth)
    bad = request(auth=authorization(chal, "alice", "guess", "SUBSCRIBE", URI, nc="00000009"))
    assert not auth.verify(bad, T0, Lookup(), "192.0.2.7").ok
    good = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI, nc="00000001"))
    assert auth.verify(good, T0, Lookup(), "192.0.2.1").ok


@pytest.mark.parametrize("nc", ["00000000", "xyz", "000000001"])
def test_malformed_nc(auth, nc):
    _, req = signed(auth, nc=nc)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "malformed nc"


def test_uri_mismatch(auth):
    _, req = signed(auth, uri="sip:bob@example.com", digest_uri="sip:mallory@example.com")
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "uri mismatch"


def test_method_is_part_of_the_digest(auth):
    chal = chal_for(auth)
    req = request("PUBLISH", auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").reason == "wrong password"


@pytest.mark.parametrize("field", ["username", "nonce", "uri", "response", "qop", "nc", "cnonce"])
def test_missing_fields(auth, field):
    _, req = signed(auth, drop=(field,))
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == f"missing {field}"
    assert auth.failures("192.0.2.1", T0) == 1


@pytest.mark.parametrize(
    "override, reason",
    [
        ({"algorithm": "SHA-512-256"}, "unsupported algorithm"),
        ({"algorithm": "MD5-sess"}, "unsupported algorithm"),
        ({"qop": "auth-int"}, "unsupported qop"),
        ({"userhash": "true"}, "userhash not supported"),
        ({"opaque": '"0000"'}, "opaque mismatch"),
    ],
)
def test_rejected_parameters(auth, override, reason):
    _, req = signed(auth, override=override)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == reason


def test_algorithm_not_enabled():
    md5_only = DigestAuthenticator(REALM, SECRET, algorithms=("MD5",))
    chal = dict(chal_for(md5_only), algorithm="SHA-256")
    req = request(auth=authorization(chal, "alice", "wonderland", "SUBSCRIBE", URI))
    assert md5_only.verify(req, T0, Lookup(), "192.0.2.1").reason == "unsupported algorithm"


def test_missing_opaque_is_tolerated(auth):
    _, req = signed(auth, drop=("opaque",))
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok


@pytest.mark.parametrize("value", ['Digest username="alice', "Digest realm", "Basic YWxpY2U6eA==", "   "])
def test_malformed_or_foreign_scheme(auth, value):
    req = request(auth=value)
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and not r.stale


def test_unknown_user_costs_the_same_hashing(auth, monkeypatch):
    calls = []
    real = digest_mod._h

    def counting(alg, data):
        calls.append(alg)
        return real(alg, data)

    monkeypatch.setattr(digest_mod, "_h", counting)
    _, req = signed(auth, user="nobody", password="x")
    r = auth.verify(req, T0, Lookup(), "192.0.2.1")
    assert not r.ok and r.reason == "unknown user" and r.username == "nobody"
    unknown = len(calls)
    calls.clear()
    _, req = signed(auth, password="guess")
    assert auth.verify(req, T0, Lookup(), "192.0.2.2").reason == "wrong password"
    assert unknown == len(calls) == 3  # HA1, HA2, response


# --------------------------------------------------------------------------- rate limiting


def test_rate_limit_after_n_failures_per_source(auth):
    lookup = Lookup()
    for i in range(3):
        _, bad = signed(auth, password=f"guess{i}")
        r = auth.verify(bad, T0 + i, lookup, "203.0.113.5")
        assert not r.ok and not r.rate_limited
    n_lookups = len(lookup.calls)
    # even correct credentials are refused now, without lookup or hashing
    _, good = signed(auth, now=T0 + 3)
    r = auth.verify(good, T0 + 3, lookup, "203.0.113.5")
    assert not r.ok and r.rate_limited and r.reason
    assert r.retry_after == pytest.approx(30 - 1)
    assert len(lookup.calls) == n_lookups
    assert auth.verify(request(), T0 + 3, lookup, "203.0.113.5").rate_limited
    # another source is unaffected
    _, good = signed(auth, now=T0 + 3)
    assert auth.verify(good, T0 + 3, lookup, "198.51.100.1").ok
    # the lockout ends
    _, good = signed(auth, now=T0 + 40)
    assert auth.verify(good, T0 + 40, lookup, "203.0.113.5").ok


def test_rate_limited_path_does_no_hashing(auth, monkeypatch):
    for i in range(3):
        _, bad = signed(auth, password="guess")
        auth.verify(bad, T0, Lookup(), "203.0.113.5")

    def boom(*a):
        raise AssertionError("hashed while rate limited")

    monkeypatch.setattr(digest_mod, "_h", boom)
    _, good = signed(auth)
    assert auth.verify(good, T0, Lookup(), "203.0.113.5").rate_limited


def test_failures_slide_out_of_the_window(auth):
    for t in (0, 1):
        _, bad = signed(auth, password="guess", now=T0 + t)
        auth.verify(bad, T0 + t, Lookup(), "203.0.113.5")
    assert auth.failures("203.0.113.5", T0 + 2) == 2
    _, bad = signed(auth, password="guess", now=T0 + 70)
    r = auth.verify(bad, T0 + 70, Lookup(), "203.0.113.5")
    assert not r.rate_limited
    assert auth.failures("203.0.113.5", T0 + 70) == 1
    _, good = signed(auth, now=T0 + 70)
    assert auth.verify(good, T0 + 70, Lookup(), "203.0.113.5").ok


def test_success_does_not_reset_failures(auth):
    src = "203.0.113.5"
    for i in range(2):
        _, bad = signed(auth, user="carol", password="guess")
        auth.verify(bad, T0, Lookup(), src)
    _, good = signed(auth)
    assert auth.verify(good, T0, Lookup(), src).ok
    _, bad = signed(auth, user="carol", password="guess")
    auth.verify(bad, T0, Lookup(), src)
    _, good = signed(auth)
    assert auth.verify(good, T0, Lookup(), src).rate_limited


def test_rate_limiting_can_be_disabled():
    a = DigestAuthenticator(REALM, SECRET, max_failures_per_source=0)
    for _ in range(50):
        _, bad = signed(a, password="guess")
        assert not a.verify(bad, T0, Lookup(), "203.0.113.5").rate_limited


# --------------------------------------------------------------------------- state bounds


def test_nc_table_is_bounded_and_forgotten_nonces_go_stale():
    a = DigestAuthenticator(REALM, SECRET, max_nonces=2)
    chals = [chal_for(a, T0 + i) for i in range(3)]
    reqs = [request(auth=authorization(c, "alice", "wonderland", "SUBSCRIBE", URI)) for c in chals]
    for i, r in enumerate(reqs):
        assert a.verify(r, T0 + 3, Lookup(), "192.0.2.1").ok, i
    assert len(a._nc) == 2
    # The first nonce was evicted: a replay of it must not be trusted again.
    r = a.verify(reqs[0], T0 + 4, Lookup(), "192.0.2.1")
    assert not r.ok and r.stale
    # a nonce issued after the eviction is fine
    fresh = request(auth=authorization(chal_for(a, T0 + 5), "alice", "wonderland", "SUBSCRIBE", URI))
    assert a.verify(fresh, T0 + 5, Lookup(), "192.0.2.1").ok


def test_forget_expired(auth):
    _, req = signed(auth)
    assert auth.verify(req, T0, Lookup(), "192.0.2.1").ok
    _, bad = signed(auth, password="guess")
    auth.verify(bad, T0, Lookup(), "203.0.113.5")
    auth.forget_expired(T0 + 10)
    assert len(auth._nc) == 1 and "203.0.113.5" in auth._sources
    auth.forget_expired(T0 + auth.nonce_ttl + 61)
    assert len(auth._nc) == 0 and not auth._sources
    # a replay after housekeeping is answered stale, never accepted
    r = auth.verify(req, T0 + auth.nonce_ttl + 62, Lookup(), "192.0.2.1")
    assert not r.ok and r.stale


def test_forget_expired_keeps_locked_sources(auth):
    for _ in range(3):
        _, bad = signed(auth, password="guess")
        auth.verify(bad, T0, Lookup(), "203.0.113.5")
    auth.forget_expired(T0 + 10)
    _, good = signed(auth, now=T0 + 10)
    assert auth.verify(good, T0 + 10, Lookup(), "203.0.113.5").rate_limited
    auth.forget_expired(T0 + 31)
    assert "203.0.113.5" not in auth._sources


# --------------------------------------------------------------------------- header parser


def test_parse_auth_header_quoting():
    scheme, p = parse_auth_header('Digest  username="a\\"b", realm="x,y" ,nc=00000001,, qop=auth')
    assert scheme == "Digest"
    assert p == {"username": 'a"b', "realm": "x,y", "nc": "00000001", "qop": "auth"}


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="a", realm="b"', 'Digest realm="a', "Digest realm",
        'Digest realm="a" nonce="b"', "", "Digest =x",
    ],
)
def test_parse_auth_header_errors(value):
    with pytest.raises(AuthParseError):
        parse_auth_header(value)
