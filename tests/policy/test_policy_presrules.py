"""pres-rules parsing and RFC 4745 evaluation (presenced.policy.presrules)."""

from __future__ import annotations

import calendar

import pytest
from policy_support import ALL_GRANTS, load, many, one, rule, ruleset, validity

from presenced.policy import (
    ALL,
    NONE,
    ComponentGrant,
    Decision,
    RulesError,
    Selector,
    Transformations,
    decision_to_status,
    evaluate,
    parse_rules,
)
from presenced.policy.presrules import (
    IdentityCondition,
    SphereCondition,
    UnknownCondition,
    ValidityCondition,
)

OWNER = "sip:alice@example.com"
NOW = 1_700_000_000.0


def decide(doc: bytes, watcher: str, **kw):
    kw.setdefault("now_unix", NOW)
    return evaluate(parse_rules(doc), watcher, OWNER, **kw)


def sub(doc: bytes, watcher: str, **kw) -> str | None:
    d = decide(doc, watcher, **kw)
    return None if d is None else d.sub_handling


def ts(text: str) -> float:
    """UTC 'YYYY-MM-DD HH:MM:SS' → Unix seconds (independent of the parser)."""
    import time

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


# --------------------------------------------------------------------------
# Identity table: document by watcher → sub-handling (None = no rule matched)

DOC_ONE = ruleset(rule("r", conditions=one("sip:bob@example.com"), sub="allow"))
DOC_ONE_TEL = ruleset(rule("r", conditions=one("tel:+1-212-555-1234"), sub="allow"))
DOC_ONE_MAILTO = ruleset(rule("r", conditions=one("mailto:Bob@Example.net"), sub="allow"))
DOC_MANY = ruleset(rule("r", conditions=many(), sub="confirm"))
DOC_MANY_DOMAIN = ruleset(rule("r", conditions=many("example.com", except_ids=["sip:eve@example.com"]), sub="allow"))
DOC_MANY_EXCEPT = ruleset(
    rule(
        "r",
        conditions=many(except_domains=["evil.example"], except_ids=["sip:mallory@good.example"]),
        sub="allow",
    )
)
DOC_OR = ruleset(
    rule(
        "r",
        conditions='<identity><one id="sip:carol@other.example"/><many domain="corp.example"/></identity>',
        sub="allow",
    )
)
DOC_IDN = ruleset(rule("r", conditions=many("bücher.example"), sub="allow"))

IDENTITY_TABLE = [
    # <one>: SIP URI comparison of identities
    (DOC_ONE, "sip:bob@example.com", "allow"),
    (DOC_ONE, "sip:bob@EXAMPLE.COM", "allow"),  # host case-insensitive
    (DOC_ONE, "sip:Bob@example.com", None),  # user case-sensitive
    (DOC_ONE, "sip:b%6Fb@example.com", "allow"),  # escaped unreserved char
    (DOC_ONE, "sips:bob@example.com", "allow"),  # same principal
    (DOC_ONE, "pres:bob@example.com", "allow"),
    (DOC_ONE, "sip:bob@example.com;transport=tcp", "allow"),  # params ignored
    (DOC_ONE, "sip:bob@example.com:5070", "allow"),  # port ignored
    (DOC_ONE, "<sip:bob@example.com>", "allow"),
    (DOC_ONE, "sip:bob@example.org", None),
    (DOC_ONE, "sip:bobby@example.com", None),
    (DOC_ONE, "sip:example.com", None),
    (DOC_ONE, "not a uri", None),
    (DOC_ONE, "", None),
    (DOC_ONE_TEL, "tel:+12125551234", "allow"),  # visual separators
    (DOC_ONE_TEL, "tel:+1.212.555.1234", "allow"),
    (DOC_ONE_TEL, "tel:+12125551235", None),
    (DOC_ONE_TEL, "sip:+12125551234@example.com", None),
    (DOC_ONE_MAILTO, "mailto:Bob@Example.net", "allow"),  # opaque: exact
    (DOC_ONE_MAILTO, "mailto:bob@example.net", None),
    # <many/>: every authenticated identity
    (DOC_MANY, "sip:anyone@anywhere.example", "confirm"),
    (DOC_MANY, "tel:+4930123456", "confirm"),
    # <many domain> + <except id>
    (DOC_MANY_DOMAIN, "sip:alice@example.com", "allow"),
    (DOC_MANY_DOMAIN, "sip:alice@EXAMPLE.com", "allow"),
    (DOC_MANY_DOMAIN, "sip:alice@example.com.", "allow"),
    (DOC_MANY_DOMAIN, "sip:eve@example.com", None),
    (DOC_MANY_DOMAIN, "sip:eve@Example.Com;transport=udp", None),
    (DOC_MANY_DOMAIN, "sip:alice@sub.example.com", None),  # no subdomains
    (DOC_MANY_DOMAIN, "sip:alice@example.org", None),
    (DOC_MANY_DOMAIN, "sip:alice@xample.com", None),  # Kamailio's length bug
    (DOC_MANY_DOMAIN, "sip:alice@example.co", None),
    (DOC_MANY_DOMAIN, "tel:+12125551234", None),  # no domain
    # <many> + <except domain> + <except id>
    (DOC_MANY_EXCEPT, "sip:bob@good.example", "allow"),
    (DOC_MANY_EXCEPT, "sip:x@evil.example", None),
    (DOC_MANY_EXCEPT, "sip:x@EVIL.EXAMPLE", None),
    (DOC_MANY_EXCEPT, "sip:x@sub.evil.example", "allow"),  # exact domain only
    (DOC_MANY_EXCEPT, "sip:mallory@good.example", None),
    (DOC_MANY_EXCEPT, "sip:mallory@good.example;user=phone", None),
    # children of <identity> are OR-ed
    (DOC_OR, "sip:carol@other.example", "allow"),
    (DOC_OR, "sip:dave@corp.example", "allow"),
    (DOC_OR, "sip:dave@other.example", None),
    # IDN domain attribute vs ACE host
    (DOC_IDN, "sip:x@xn--bcher-kva.example", "allow"),
]


@pytest.mark.parametrize(("doc", "watcher", "expected"), IDENTITY_TABLE)
def test_identity_table(doc: bytes, watcher: str, expected: str | None) -> None:
    assert sub(doc, watcher) == expected


@pytest.mark.parametrize("doc", [DOC_ONE, DOC_MANY, DOC_MANY_DOMAIN, DOC_MANY_EXCEPT, DOC_OR])
def test_unauthenticated_watcher_never_matches_identity(doc: bytes) -> None:
    # RFC 4745 §7.1: only authenticated identities match, <many/> included.
    for watcher in ("sip:bob@example.com", "sip:anonymous@anonymous.invalid", "sip:dave@corp.example"):
        assert decide(doc, watcher, authenticated=False) is None


def test_rule_without_identity_matches_anonymous() -> None:
    doc = ruleset(
        rule("named", conditions=one("sip:bob@example.com"), sub="allow"),
        rule("anyone", conditions='<sphere value="home"/>', sub="polite-block"),
    )
    d = decide(doc, "sip:anonymous@anonymous.invalid", authenticated=False, sphere="home")
    assert d is not None and d.sub_handling == "polite-block" and d.matched_rules == ("anyone",)


def test_rule_without_conditions_matches_everyone() -> None:
    for doc in (
        ruleset(rule("open", sub="confirm")),
        ruleset(rule("open", conditions="", sub="confirm")),
    ):
        assert sub(doc, "sip:x@y.example") == "confirm"
        assert sub(doc, "garbage") == "confirm"
        assert sub(doc, "sip:x@y.example", authenticated=False) == "confirm"


def test_empty_identity_never_matches() -> None:
    doc = ruleset(rule("r", conditions="<identity/>", sub="allow"))
    assert decide(doc, "sip:bob@example.com") is None


def test_unknown_identity_child_is_false_but_others_still_count() -> None:
    only_unknown = ruleset(rule("r", conditions="<identity><x:friend-of-friend/></identity>", sub="allow"))
    assert decide(only_unknown, "sip:bob@example.com") is None
    mixed = ruleset(
        rule("r", conditions='<identity><x:friend-of-friend/><one id="sip:bob@example.com"/></identity>', sub="allow")
    )
    assert sub(mixed, "sip:bob@example.com") == "allow"


@pytest.mark.parametrize(
    "unknown",
    [
        '<x:time-of-day from="09:00" to="17:00"/>',
        '<ocp:other-identity xmlns:ocp="urn:oma:xml:xdm:common-policy"/>',
        "<geolocation/>",  # unknown even in the common-policy namespace
    ],
)
def test_unknown_condition_makes_rule_never_match(unknown: str) -> None:
    doc = ruleset(
        rule("r", conditions=one("sip:bob@example.com") + unknown, sub="allow"),
        rule("plain", conditions=one("sip:carol@example.com"), sub="allow"),
    )
    rs = parse_rules(doc)
    assert isinstance(rs.rules[0].conditions[-1], UnknownCondition)
    assert evaluate(rs, "sip:bob@example.com", OWNER, now_unix=NOW) is None
    assert sub(doc, "sip:carol@example.com") == "allow"


def test_all_conditions_must_hold() -> None:
    doc = ruleset(rule("r", conditions=one("sip:bob@example.com") + '<sphere value="work"/>', sub="allow"))
    assert sub(doc, "sip:bob@example.com", sphere="work") == "allow"
    assert decide(doc, "sip:bob@example.com", sphere="home") is None
    assert decide(doc, "sip:carol@example.com", sphere="work") is None


def test_several_identity_conditions_are_anded() -> None:
    doc = ruleset(rule("r", conditions=many("example.com") + many(except_ids=["sip:eve@example.com"]), sub="allow"))
    assert sub(doc, "sip:bob@example.com") == "allow"
    assert decide(doc, "sip:eve@example.com") is None


# --------------------------------------------------------------------------
# Combining (RFC 4745 §10)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("confirm", "allow", "allow"),
        ("allow", "confirm", "allow"),
        ("block", "polite-block", "polite-block"),
        ("polite-block", "block", "polite-block"),
        ("block", "confirm", "confirm"),
        ("allow", "block", "allow"),  # max: a matching block cannot take back an allow
        ("block", "block", "block"),
        ("confirm", None, "confirm"),  # a rule without sub-handling contributes nothing
        (None, None, "block"),  # matched, nothing said: RFC 5025 default block
    ],
)
def test_sub_handling_combines_as_maximum(first: str | None, second: str | None, expected: str) -> None:
    doc = ruleset(
        rule("a", conditions=many(), sub=first),
        rule("b", conditions=one("sip:bob@example.com"), sub=second),
    )
    d = decide(doc, "sip:bob@example.com")
    assert d is not None
    assert d.sub_handling == expected
    assert d.matched_rules == ("a", "b")


def test_kamailio_first_match_would_differ() -> None:
    # Kamailio: first matching rule (confirm) wins. RFC 4745: allow.
    doc = ruleset(
        rule("everyone", conditions=many(), sub="confirm"),
        rule("bob", conditions=one("sip:bob@example.com"), sub="allow"),
    )
    assert sub(doc, "sip:bob@example.com") == "allow"
    assert sub(doc, "sip:carol@example.com") == "confirm"


def test_non_matching_rules_do_not_contribute() -> None:
    doc = ruleset(
        rule("bob", conditions=one("sip:bob@example.com"), sub="allow", transformations=ALL_GRANTS),
        rule("all", conditions=many(), transformations="<pr:provide-note>true</pr:provide-note>"),
    )
    d = decide(doc, "sip:carol@example.com")
    assert d == Decision("block", Transformations(attributes=frozenset({"note"})), ("all",))


def test_several_sub_handling_in_one_rule_take_the_maximum() -> None:
    doc = ruleset(rule("r", actions="<pr:sub-handling>allow</pr:sub-handling><pr:sub-handling>block</pr:sub-handling>"))
    assert sub(doc, "sip:x@y.example") == "allow"


def test_transformations_combine_as_union() -> None:
    doc = ruleset(
        rule(
            "a",
            conditions=many(),
            sub="allow",
            transformations=(
                "<pr:provide-services><pr:service-uri-scheme>SIP</pr:service-uri-scheme></pr:provide-services>"
                "<pr:provide-devices><pr:deviceID>urn:uuid:1</pr:deviceID></pr:provide-devices>"
                "<pr:provide-activities>true</pr:provide-activities>"
                "<pr:provide-mood>false</pr:provide-mood>"
                "<pr:provide-user-input>bare</pr:provide-user-input>"
            ),
        ),
        rule(
            "b",
            conditions=one("sip:bob@example.com"),
            transformations=(
                "<pr:provide-services><pr:occurrence-id>t1</pr:occurrence-id></pr:provide-services>"
                "<pr:provide-persons><pr:all-persons/></pr:provide-persons>"
                "<pr:provide-devices><pr:class>phone</pr:class></pr:provide-devices>"
                "<pr:provide-note>true</pr:provide-note>"
                "<pr:provide-user-input>thresholds</pr:provide-user-input>"
                '<pr:provide-unknown-attribute ns="urn:example:foo" name="hobby">true</pr:provide-unknown-attribute>'
            ),
        ),
    )
    d = decide(doc, "sip:bob@example.com")
    assert d is not None and d.sub_handling == "allow"
    t = d.transformations
    assert t.provide_services == ComponentGrant(
        False, frozenset({Selector("service-uri-scheme", "sip"), Selector("occurrence-id", "t1")})
    )
    assert t.provide_persons == ALL
    assert t.provide_devices == ComponentGrant(
        False, frozenset({Selector("deviceID", "urn:uuid:1"), Selector("class", "phone")})
    )
    assert t.attributes == frozenset({"activities", "note"})  # mood=false grants nothing
    assert t.provide_user_input == "thresholds"
    assert t.provide_unknown_attributes == frozenset({("urn:example:foo", "hobby")})
    assert not t.provide_all_attributes

    carol = decide(doc, "sip:carol@example.com")
    assert carol is not None and carol.transformations.provide_persons == NONE


def test_all_services_absorbs_selectors() -> None:
    doc = ruleset(
        rule("a", transformations="<pr:provide-services><pr:class>x</pr:class></pr:provide-services>"),
        rule("b", transformations="<pr:provide-services><pr:all-services/></pr:provide-services>"),
    )
    d = decide(doc, "sip:x@y.example")
    assert d is not None and d.transformations.provide_services == ALL


def test_no_transformations_grants_nothing() -> None:
    d = decide(ruleset(rule("r", sub="allow")), "sip:x@y.example")
    assert d is not None and d.transformations == Transformations()
    assert d.transformations.provide_services.none


def test_unknown_actions_and_transformations_are_ignored() -> None:
    doc = ruleset(
        rule(
            "r",
            actions="<x:forward-to>sip:voicemail@example.com</x:forward-to><pr:future-action/>",
            sub="allow",
            transformations="<x:provide-everything/><pr:provide-future>true</pr:provide-future>",
        )
    )
    d = decide(doc, "sip:x@y.example")
    assert d is not None and d.sub_handling == "allow" and d.transformations == Transformations()


def test_empty_selector_selects_nothing() -> None:
    doc = ruleset(
        rule(
            "r",
            transformations="<pr:provide-services><pr:service-uri-scheme></pr:service-uri-scheme></pr:provide-services>",
        )
    )
    d = decide(doc, "sip:x@y.example")
    assert d is not None and d.transformations.provide_services == NONE


# --------------------------------------------------------------------------
# Validity (RFC 4745 §7.4)

DOC_VALID = ruleset(
    rule(
        "office",
        conditions=validity(("2024-01-15T09:00:00+01:00", "2024-01-15T17:00:00+01:00")),
        sub="allow",
    )
)


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        ("2024-01-15 07:59:59", False),  # before (08:59:59+01:00)
        ("2024-01-15 08:00:00", True),  # from is inclusive
        ("2024-01-15 12:00:00", True),
        ("2024-01-15 15:59:59", True),
        ("2024-01-15 16:00:00", False),  # until is exclusive
        ("2024-01-16 12:00:00", False),  # after
        ("2023-01-15 12:00:00", False),
    ],
)
def test_validity_interval_with_timezone(now: str, inside: bool) -> None:
    assert (sub(DOC_VALID, "sip:x@y.example", now_unix=ts(now)) == "allow") is inside


def test_validity_fractional_now_at_boundary() -> None:
    start = ts("2024-01-15 08:00:00")
    assert decide(DOC_VALID, "sip:x@y.example", now_unix=start - 0.001) is None
    assert decide(DOC_VALID, "sip:x@y.example", now_unix=start + 0.001) is not None


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
        ("2024-01-15T03:00:00-05:00", "2024-01-15T11:00:00-05:00"),
        ("2024-01-15T13:30:00+05:30", "2024-01-15T21:30:00+05:30"),
        ("2024-01-15T08:00:00.000Z", "2024-01-15T16:00:00.5+00:00"),
        ("2024-01-14T24:00:00-08:00", "2024-01-15T16:00:00Z"),  # 24:00 = next day 00:00
    ],
)
def test_validity_equivalent_timezones(start: str, end: str) -> None:
    doc = ruleset(rule("r", conditions=validity((start, end)), sub="allow"))
    assert sub(doc, "sip:x@y.example", now_unix=ts("2024-01-15 08:00:00")) == "allow"
    assert sub(doc, "sip:x@y.example", now_unix=ts("2024-01-15 15:59:59")) == "allow"
    assert decide(doc, "sip:x@y.example", now_unix=ts("2024-01-15 07:59:59")) is None


def test_validity_several_intervals_any_matches() -> None:
    doc = ruleset(
        rule(
            "r",
            conditions=validity(
                ("2024-01-15T08:00:00Z", "2024-01-15T09:00:00Z"),
                ("2024-01-15T12:00:00Z", "2024-01-15T13:00:00Z"),
            ),
            sub="allow",
        )
    )
    assert sub(doc, "sip:x@y.example", now_unix=ts("2024-01-15 08:30:00")) == "allow"
    assert decide(doc, "sip:x@y.example", now_unix=ts("2024-01-15 10:30:00")) is None
    assert sub(doc, "sip:x@y.example", now_unix=ts("2024-01-15 12:30:00")) == "allow"


def test_validity_inverted_interval_never_matches() -> None:
    doc = ruleset(rule("r", conditions=validity(("2024-01-15T17:00:00Z", "2024-01-15T09:00:00Z")), sub="allow"))
    assert isinstance(parse_rules(doc).rules[0].conditions[0], ValidityCondition)
    assert decide(doc, "sip:x@y.example", now_unix=ts("2024-01-15 12:00:00")) is None


def test_validity_combined_with_identity() -> None:
    doc = ruleset(
        rule("always", conditions=many(), sub="confirm"),
        rule(
            "temp",
            conditions=one("sip:bob@example.com") + validity(("2024-01-15T00:00:00Z", "2024-01-16T00:00:00Z")),
            sub="allow",
        ),
    )
    assert sub(doc, "sip:bob@example.com", now_unix=ts("2024-01-15 10:00:00")) == "allow"
    assert sub(doc, "sip:bob@example.com", now_unix=ts("2024-01-17 10:00:00")) == "confirm"


# --------------------------------------------------------------------------
# Sphere (RFC 4745 §7.3, RFC 5025 §3.1.2)

DOC_SPHERE = ruleset(rule("r", conditions='<sphere value="work home"/>', sub="allow"))


@pytest.mark.parametrize(
    ("sphere", "expected"),
    [
        ("work", "allow"),
        ("home", "allow"),
        ("Work", "allow"),  # tokens compare case-insensitively
        ("  home ", "allow"),
        ("travel", None),
        ("work home", None),  # one sphere, not a list
        (None, None),  # no sphere published: FALSE (Kamailio: TRUE)
        ("", None),
    ],
)
def test_sphere(sphere: str | None, expected: str | None) -> None:
    assert sub(DOC_SPHERE, "sip:x@y.example", sphere=sphere) == expected


def test_sphere_condition_parsed_as_token_set() -> None:
    cond = parse_rules(DOC_SPHERE).rules[0].conditions[0]
    assert cond == SphereCondition(frozenset({"work", "home"}))


# --------------------------------------------------------------------------
# Malformed documents


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"", "empty"),
        (b"not xml at all", "malformed"),
        (b"<ruleset xmlns='urn:ietf:params:xml:ns:common-policy'><rule id='a'>", "malformed"),
        (
            b'<?xml version="1.0"?><!DOCTYPE ruleset [<!ENTITY x "y">]>'
            b'<ruleset xmlns="urn:ietf:params:xml:ns:common-policy"/>',
            "DOCTYPE",
        ),
        (b'<ruleset xmlns="urn:ietf:params:xml:ns:pres-rules"/>', "namespace"),
        (b"<ruleset/>", "namespace"),
        (b'<presence xmlns="urn:ietf:params:xml:ns:pidf"/>', "ruleset"),
        (ruleset(rule("r", sub="deny")), "sub-handling"),
        (ruleset(rule("r", sub="Allow")), "sub-handling"),
        (ruleset(rule("r", sub="")), "sub-handling"),
        (ruleset("<rule><actions/></rule>"), "id"),
        (ruleset('<rule id=""/>'), "id"),
        (ruleset(rule("r"), rule("r")), "duplicate"),
        (ruleset(rule("r", conditions="<identity><one/></identity>")), "id"),
        (ruleset(rule("r", conditions='<identity><one id="bob@example.com"/></identity>')), "URI"),
        (ruleset(rule("r", conditions='<identity><many><except id="nope"/></many></identity>')), "URI"),
        (ruleset(rule("r", conditions='<identity><many domain=""/></identity>')), "domain"),
        (ruleset(rule("r", conditions="<sphere/>")), "sphere"),
        (ruleset(rule("r", conditions='<sphere value="  "/>')), "sphere"),
        (ruleset(rule("r", conditions="<validity/>")), "validity"),
        (ruleset(rule("r", conditions="<validity><from>2024-01-01T00:00:00Z</from></validity>")), "validity"),
        (
            ruleset(
                rule(
                    "r",
                    conditions="<validity><until>2024-01-01T00:00:00Z</until><from>2024-01-01T00:00:00Z</from></validity>",
                )
            ),
            "validity",
        ),
        (ruleset(rule("r", conditions=validity(("2024-01-01T00:00:00", "2024-01-02T00:00:00Z")))), "timezone"),
        (ruleset(rule("r", conditions=validity(("2024-13-01T00:00:00Z", "2024-01-02T00:00:00Z")))), "month"),
        (ruleset(rule("r", conditions=validity(("2023-02-29T00:00:00Z", "2024-01-02T00:00:00Z")))), "day"),
        (ruleset(rule("r", conditions=validity(("2024-01-01T25:00:00Z", "2024-01-02T00:00:00Z")))), "hour"),
        (ruleset(rule("r", conditions=validity(("2024-01-01T24:00:01Z", "2024-01-02T00:00:00Z")))), "24"),
        (ruleset(rule("r", conditions=validity(("2024-01-01T00:00:00+15:00", "2024-01-02T00:00:00Z")))), "offset"),
        (ruleset(rule("r", conditions=validity(("yesterday", "2024-01-02T00:00:00Z")))), "dateTime"),
        (ruleset(rule("r", conditions=validity(("2024-1-01T00:00:00Z", "2024-01-02T00:00:00Z")))), "dateTime"),
        (ruleset(rule("r", transformations="<pr:provide-activities>yes</pr:provide-activities>")), "boolean"),
        (ruleset(rule("r", transformations="<pr:provide-activities/>")), "boolean"),
        (ruleset(rule("r", transformations="<pr:provide-user-input>some</pr:provide-user-input>")), "level"),
        (
            ruleset(
                rule("r", transformations="<pr:provide-unknown-attribute name='x'>true</pr:provide-unknown-attribute>")
            ),
            "ns",
        ),
        (ruleset('<rule id="r"><conditions/><conditions/></rule>'), "more than one"),
        (ruleset('<rule id="r"><condition/></rule>'), "unexpected"),
        (ruleset('<rules id="r"/>'), "unexpected"),
    ],
)
def test_malformed_documents_raise_rules_error(doc: bytes, fragment: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(doc)
    reason = info.value.reason
    assert fragment.lower() in reason.lower()
    assert "\n" not in reason and len(reason) <= 120 and reason.isprintable()
    assert isinstance(info.value, ValueError)


def test_foreign_elements_in_ruleset_and_rule_are_ignored() -> None:
    doc = ruleset(
        '<x:meta>owner</x:meta><rule id="r"><x:comment>hi</x:comment>'
        "<actions><pr:sub-handling>allow</pr:sub-handling></actions></rule>"
    )
    assert sub(doc, "sip:x@y.example") == "allow"


def test_rule_parts_in_any_order_and_whitespace_tolerated() -> None:
    doc = ruleset(
        '<rule id=" r1 "><transformations><pr:provide-note> true </pr:provide-note></transformations>'
        "<actions><pr:sub-handling>\n  allow\n</pr:sub-handling></actions>"
        f"<conditions>{one('sip:bob@example.com')}</conditions></rule>"
    )
    d = decide(doc, "sip:bob@example.com")
    assert d == Decision("allow", Transformations(attributes=frozenset({"note"})), ("r1",))


def test_empty_ruleset_matches_nothing() -> None:
    rs = parse_rules(ruleset())
    assert len(rs) == 0 and rs.rule_ids == ()
    assert evaluate(rs, "sip:x@y.example", OWNER, now_unix=NOW) is None


def test_parse_accepts_str_and_prefixed_documents() -> None:
    text = (
        '<cp:ruleset xmlns:cp="urn:ietf:params:xml:ns:common-policy" xmlns:pr="urn:ietf:params:xml:ns:pres-rules">'
        '<cp:rule id="a"><cp:actions><pr:sub-handling>polite-block</pr:sub-handling></cp:actions></cp:rule>'
        "</cp:ruleset>"
    )
    assert evaluate(parse_rules(text), "sip:x@y.example", OWNER, now_unix=NOW).sub_handling == "polite-block"


def test_pres_rules_elements_in_wrong_namespace_are_not_understood() -> None:
    # <sub-handling> in the common-policy namespace is an unknown action.
    doc = ruleset('<rule id="r"><actions><sub-handling>allow</sub-handling></actions></rule>')
    assert sub(doc, "sip:x@y.example") == "block"


# --------------------------------------------------------------------------
# Realistic documents


def test_openxcap_style_document() -> None:
    rs = parse_rules(load("openxcap-pres-rules.xml"))
    assert rs.rule_ids == (
        "wp_prs_allow_own",
        "pres_whitelist",
        "colleagues",
        "pres_blacklist",
        "pres_polite_blacklist",
        "wp_prs_buddies",
        "wp_prs_unlisted",
        "wp_prs_block_anonymous",
    )

    def ev(watcher: str, **kw):
        return evaluate(rs, watcher, OWNER, now_unix=NOW, **kw)

    own = ev("sip:alice@example.com")
    assert own.sub_handling == "allow" and own.transformations.provide_all_attributes
    # the owner is also a colleague: both rules matched, grants united
    assert own.matched_rules == ("wp_prs_allow_own", "colleagues")

    bob = ev("sip:bob@example.com")
    assert bob.sub_handling == "allow"
    assert bob.matched_rules == ("pres_whitelist", "colleagues")
    assert bob.transformations.attributes == frozenset({"activities", "mood", "note"})
    assert bob.transformations.provide_user_input == "thresholds"
    assert bob.transformations.provide_services == ALL

    assert ev("tel:+12125550100").matched_rules == ("pres_whitelist",)
    carol = ev("sip:carol@EXAMPLE.NET")
    assert carol.sub_handling == "allow" and carol.transformations.provide_persons == ALL

    dave = ev("sip:dave@example.com")  # colleague: sip services only
    assert dave.sub_handling == "allow"
    assert dave.transformations.provide_services == ComponentGrant(
        False, frozenset({Selector("service-uri-scheme", "sip")})
    )
    assert dave.transformations.provide_persons == NONE

    assert ev("sip:mallory@example.com").sub_handling == "block"  # excepted colleague, blacklisted
    assert decision_to_status(ev("sip:mallory@example.com")) == ("terminated", "rejected")
    assert decision_to_status(ev("sip:spam@spam.example")) == ("terminated", "rejected")
    assert decision_to_status(ev("sip:ex@example.org")) == ("active", "polite-block")
    # OMA conditions are unsupported: those rules never match; strangers get the default
    assert ev("sip:stranger@elsewhere.example") is None
    assert decision_to_status(ev("sip:stranger@elsewhere.example")) == ("pending", None)
    assert ev("sip:anonymous@anonymous.invalid", authenticated=False) is None


def test_kamailio_style_document() -> None:
    rs = parse_rules(load("kamailio-pres-rules.xml"))
    monday_10 = ts("2024-03-04 09:00:00")  # 10:00+01:00
    monday_20 = ts("2024-03-04 19:00:00")

    def ev(watcher: str, now: float, sphere: str | None):
        return evaluate(rs, watcher, "sip:boss@corp.example", now_unix=now, sphere=sphere)

    d = ev("sip:dev@corp.example", monday_10, "work")
    assert d.sub_handling == "allow" and d.matched_rules == ("rule_work_hours", "rule_corp_default")
    assert d.transformations.attributes == frozenset({"activities"})
    assert ev("sip:dev@corp.example", monday_20, "work").sub_handling == "confirm"
    assert ev("sip:dev@corp.example", monday_10, "home").sub_handling == "confirm"
    # Kamailio would allow here (no published sphere counts as a match)
    assert ev("sip:dev@corp.example", monday_10, None).sub_handling == "confirm"
    assert ev("sip:dev@other.example", monday_10, "work") is None


# --------------------------------------------------------------------------
# decision_to_status


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("allow", ("active", None)),
        ("confirm", ("pending", None)),
        ("polite-block", ("active", "polite-block")),
        ("block", ("terminated", "rejected")),
    ],
)
def test_decision_to_status(value: str, status: tuple[str, str | None]) -> None:
    assert decision_to_status(Decision(value, Transformations(), ("r",))) == status


def test_decision_to_status_defaults() -> None:
    assert decision_to_status(None) == ("pending", None)
    assert decision_to_status(None, default="active") == ("active", None)
    assert decision_to_status(None, default="terminated") == ("terminated", "rejected")
    assert decision_to_status(None, default="polite-block") == ("active", "polite-block")
    with pytest.raises(ValueError):
        decision_to_status(None, default="maybe")


def test_decision_validates_sub_handling() -> None:
    with pytest.raises(ValueError):
        Decision("deny", Transformations(), ())


def test_parsed_model_is_hashable_and_comparable() -> None:
    a = parse_rules(load("openxcap-pres-rules.xml"))
    b = parse_rules(load("openxcap-pres-rules.xml"))
    assert a == b and hash(a) == hash(b)
    cond = a.rules[1].conditions[0]
    assert isinstance(cond, IdentityCondition) and len(cond.ones) == 3
