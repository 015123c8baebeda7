"""No-rules defaults, identity normalisation and xs:dateTime parsing."""

from __future__ import annotations

import calendar
import time

import pytest

from presenced.policy import DEFAULT_MODES, default_decision, identity_key, validate_default_mode
from presenced.policy.identity import normalize_domain
from presenced.policy.xsdtime import parse_xs_datetime

OWNER = "sip:alice@example.com"


@pytest.mark.parametrize(
    ("mode", "watcher", "expected"),
    [
        ("pending", "sip:bob@example.com", ("pending", None)),
        ("pending", "sip:bob@other.example", ("pending", None)),
        ("allow", "sip:bob@other.example", ("active", None)),
        ("allow", "garbage", ("active", None)),
        ("block", "sip:bob@example.com", ("terminated", "rejected")),
        ("same-domain", "sip:bob@example.com", ("active", None)),
        ("same-domain", "sips:bob@EXAMPLE.COM;transport=tls", ("active", None)),
        ("same-domain", "sip:bob@sub.example.com", ("pending", None)),
        ("same-domain", "sip:bob@other.example", ("pending", None)),
        ("same-domain", "tel:+12125551234", ("pending", None)),
        ("same-domain", "garbage", ("pending", None)),
    ],
)
def test_default_decision(mode: str, watcher: str, expected) -> None:
    assert default_decision(watcher, OWNER, mode) == expected


def test_same_domain_requires_authentication() -> None:
    assert default_decision("sip:bob@example.com", OWNER, "same-domain", authenticated=False) == ("pending", None)
    assert default_decision("sip:bob@example.com", OWNER, "allow", authenticated=False) == ("active", None)


def test_same_domain_with_unusable_presentity() -> None:
    assert default_decision("sip:bob@example.com", "tel:+1", "same-domain") == ("pending", None)


def test_unknown_mode() -> None:
    assert DEFAULT_MODES == ("pending", "allow", "same-domain", "block")
    for mode in DEFAULT_MODES:
        assert validate_default_mode(mode) == mode
    with pytest.raises(ValueError, match="unknown default"):
        default_decision("sip:bob@example.com", OWNER, "confirm")


# --------------------------------------------------------------------------
# identity_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:bob@example.com", "sip:bob@EXAMPLE.com"),
        ("sip:bob@example.com", "sips:bob@example.com"),
        ("sip:bob@example.com", "pres:bob@example.com"),
        ("sip:bob@example.com", "im:bob@example.com"),
        ("sip:bob@example.com", "SIP:bob@example.com"),
        ("sip:bob@example.com", "sip:bob@example.com:5061;transport=tls?subject=x"),
        ("sip:bob@example.com", "sip:bob:secret@example.com"),
        ("sip:b%6fb@example.com", "sip:bob@example.com"),
        ("sip:a%2cb@example.com", "sip:a%2Cb@example.com"),  # reserved: hex case only
        ("sip:bob@example.com.", "sip:bob@example.com"),
        ("tel:+1-212-555-1234", "tel:+1(212)555.1234"),
        ("tel:7042;phone-context=EXAMPLE.com", "tel:7042;phone-context=example.com"),
    ],
)
def test_identity_equal(a: str, b: str) -> None:
    assert identity_key(a) is not None
    assert identity_key(a) == identity_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:bob@example.com", "sip:Bob@example.com"),
        ("sip:bob@example.com", "sip:bob@example.org"),
        ("sip:bob@example.com", "sip:example.com"),
        ("sip:a%2cb@example.com", "sip:a,b@example.com"),
        ("tel:+12125551234", "tel:+12125551234;ext=22"),
        ("tel:7042;phone-context=example.com", "tel:7042;phone-context=example.org"),
        ("tel:+12125551234", "sip:+12125551234@example.com"),
        ("mailto:bob@example.com", "mailto:Bob@example.com"),
    ],
)
def test_identity_different(a: str, b: str) -> None:
    assert identity_key(a) != identity_key(b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bob",
        "bob@example.com",
        "sip:",
        "sip:@example.com",
        "sip:bob@",
        "sip:bob@exa mple.com",
        "sip:x@bücher.example",
        "tel:",
        None,
        42,
    ],
)
def test_identity_unusable(text) -> None:
    assert identity_key(text) is None


def test_identity_domain() -> None:
    assert identity_key("sip:bob@Example.COM").domain == "example.com"
    assert identity_key("sip:bob@[2001:DB8::1]").domain == "[2001:db8::1]"
    assert identity_key("tel:+1234").domain is None
    assert normalize_domain(" Example.COM. ") == "example.com"


# --------------------------------------------------------------------------
# xs:dateTime


def _utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2024-01-15T08:00:00Z", "2024-01-15 08:00:00"),
        ("2024-01-15T09:00:00+01:00", "2024-01-15 08:00:00"),
        ("2024-01-15T03:00:00-05:00", "2024-01-15 08:00:00"),
        ("2024-01-15T00:00:00+14:00", "2024-01-14 10:00:00"),
        ("2024-01-15T00:00:00-14:00", "2024-01-15 14:00:00"),
        ("2024-02-29T12:00:00Z", "2024-02-29 12:00:00"),
        ("2000-02-29T00:00:00Z", "2000-02-29 00:00:00"),
        ("2023-12-31T24:00:00Z", "2024-01-01 00:00:00"),
        ("1970-01-01T00:00:00Z", "1970-01-01 00:00:00"),
        ("1969-12-31T23:59:59Z", "1969-12-31 23:59:59"),
        ("  2024-01-15T08:00:00Z\n", "2024-01-15 08:00:00"),
    ],
)
def test_parse_xs_datetime(value: str, utc: str) -> None:
    assert parse_xs_datetime(value) == _utc(utc)


def test_parse_xs_datetime_extremes() -> None:
    assert parse_xs_datetime("2024-01-15T08:00:00.25Z") == _utc("2024-01-15 08:00:00") + 0.25
    assert parse_xs_datetime("10000-01-01T00:00:00Z") > parse_xs_datetime("9999-12-31T23:59:59Z")
    assert parse_xs_datetime("-0001-01-01T00:00:00Z") < parse_xs_datetime("0001-01-01T00:00:00Z")
    assert parse_xs_datetime("0001-01-01T00:00:00Z") == -62135596800.0


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-15T08:00:00",  # no timezone (RFC 4745 erratum 1455)
        "2024-01-15 08:00:00Z",
        "2024-01-15",
        "2024-1-15T08:00:00Z",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-00-10T00:00:00Z",
        "2024-01-15T08:60:00Z",
        "2024-01-15T08:00:60Z",
        "2024-01-15T24:00:00.1Z",
        "2024-01-15T08:00:00+14:01",
        "2024-01-15T08:00:00+01:60",
        "2024-01-15T08:00:00+0100",
        "02024-01-15T08:00:00Z",
        "",
    ],
)
def test_parse_xs_datetime_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_xs_datetime(value)
