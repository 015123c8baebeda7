"""RFC 5025 §3.3 transformations on PIDF, and the §3.1.2 sphere."""

from __future__ import annotations

import pytest
from lxml import etree
from policy_support import ALL_GRANTS, load, rule, ruleset

from presenced.events.formats.xml import BodyError
from presenced.policy import (
    ALL,
    NONE,
    ComponentGrant,
    Selector,
    Transformations,
    apply_transformations,
    compute_sphere,
    evaluate,
    parse_rules,
)

NS = {
    "p": "urn:ietf:params:xml:ns:pidf",
    "dm": "urn:ietf:params:xml:ns:pidf:data-model",
    "r": "urn:ietf:params:xml:ns:pidf:rpid",
    "foo": "urn:example:foo",
    "caps": "urn:ietf:params:xml:ns:pidf:caps",
}

PIDF = load("rich-pidf.xml")


def filtered(t: Transformations, body: bytes = PIDF) -> etree._Element:
    out = apply_transformations(body, t)
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return etree.fromstring(out)


def ids(root: etree._Element, xpath: str) -> list[str]:
    return [e.get("id") for e in root.xpath(xpath, namespaces=NS)]


def has(root: etree._Element, xpath: str) -> bool:
    return bool(root.xpath(xpath, namespaces=NS))


def grant(*selectors: tuple[str, str]) -> ComponentGrant:
    return ComponentGrant(False, frozenset(Selector(k, v) for k, v in selectors))


def via_rules(transformations: str) -> Transformations:
    d = evaluate(
        parse_rules(ruleset(rule("r", sub="allow", transformations=transformations))),
        "sip:x@y.example",
        "sip:alice@example.com",
        now_unix=0,
    )
    assert d is not None
    return d.transformations


# --------------------------------------------------------------------------
# Components


def test_no_grants_withholds_every_component() -> None:
    root = filtered(Transformations())
    assert root.get("entity") == "sip:alice@example.com"
    assert len(root) == 0  # no tuples, persons, devices, notes, extensions


def test_provide_services_none_means_no_tuples() -> None:
    t = Transformations(provide_services=NONE, provide_persons=ALL)
    root = filtered(t)
    assert ids(root, "p:tuple") == []
    assert ids(root, "dm:person") == ["p1", "p2"]


def test_provide_persons_all_keeps_persons_but_not_their_attributes() -> None:
    root = filtered(via_rules("<pr:provide-persons><pr:all-persons/></pr:provide-persons>"))
    assert ids(root, "dm:person") == ["p1", "p2"]
    assert ids(root, "p:tuple") == [] and ids(root, "dm:device") == []
    p1 = root.xpath("dm:person[@id='p1']", namespaces=NS)[0]
    # only the timestamp survives: activities, mood, sphere, note... are attributes
    assert [etree.QName(c).localname for c in p1] == ["timestamp"]


def test_provide_devices_by_device_id() -> None:
    t = via_rules(
        "<pr:provide-devices><pr:deviceID>urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a</pr:deviceID></pr:provide-devices>"
    )
    root = filtered(t)
    assert ids(root, "dm:device") == ["d1"]  # urn:uuid compares case-insensitively
    d1 = root.xpath("dm:device", namespaces=NS)[0]
    assert has(d1, "dm:deviceID")  # the device's own id is not an attribute
    assert not has(d1, "r:class") and not has(d1, "dm:note")


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ((("service-uri-scheme", "sip"),), ["t-sip"]),
        ((("service-uri-scheme", "tel"),), ["t-tel"]),
        ((("service-uri-scheme", "im"),), ["t-im"]),
        ((("service-uri", "sip:alice@PC.example.com"),), ["t-sip"]),  # RFC 3261 comparison
        ((("service-uri", "sip:alice@pc.example.com;transport=tcp"),), []),
        ((("service-uri", "tel:+12125550199"),), ["t-tel"]),
        ((("occurrence-id", "t-im"),), ["t-im"]),
        ((("class", "mobile"),), ["t-tel"]),
        ((("class", "Mobile"),), []),
        ((("class", "desk"), ("occurrence-id", "t-im")), ["t-sip", "t-im"]),
        ((("deviceID", "urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a"),), []),  # not a service selector
    ],
)
def test_service_selectors(selectors, expected) -> None:
    root = filtered(Transformations(provide_services=grant(*selectors)))
    assert ids(root, "p:tuple") == expected


def test_person_and_device_selectors() -> None:
    root = filtered(
        Transformations(provide_persons=grant(("occurrence-id", "p2")), provide_devices=grant(("class", "phone")))
    )
    assert ids(root, "dm:person") == ["p2"]
    assert ids(root, "dm:device") == ["d1"]
    root = filtered(
        Transformations(provide_persons=grant(("class", "main")), provide_devices=grant(("occurrence-id", "d2")))
    )
    assert ids(root, "dm:person") == ["p1"]
    assert ids(root, "dm:device") == ["d2"]


def test_bare_tuple_keeps_status_contact_timestamp() -> None:
    root = filtered(Transformations(provide_services=ALL))
    t = root.xpath("p:tuple[@id='t-sip']", namespaces=NS)[0]
    assert [etree.QName(c).localname for c in t] == ["status", "contact", "timestamp"]
    assert [etree.QName(c).localname for c in t.find("p:status", NS)] == ["basic"]
    assert t.find("p:contact", NS).get("priority") == "0.8"


# --------------------------------------------------------------------------
# Attributes


def test_attribute_grants_activities_kept_mood_removed() -> None:
    t = via_rules(
        "<pr:provide-persons><pr:all-persons/></pr:provide-persons>"
        "<pr:provide-activities>true</pr:provide-activities>"
        "<pr:provide-mood>false</pr:provide-mood>"
    )
    root = filtered(t)
    assert has(root, "dm:person[@id='p1']/r:activities/r:meeting")
    assert has(root, "dm:person[@id='p2']/r:activities/r:away")
    assert not has(root, "//r:mood")
    assert not has(root, "//r:sphere") and not has(root, "//dm:note") and not has(root, "//foo:hobby")


@pytest.mark.parametrize(
    ("name", "xpath"),
    [
        ("mood", "dm:person/r:mood"),
        ("place-type", "dm:person/r:place-type"),
        ("sphere", "dm:person/r:sphere"),
        ("time-offset", "dm:person/r:time-offset"),
        ("class", "dm:person/r:class"),
        ("note", "dm:person/dm:note"),
    ],
)
def test_each_person_attribute_grant(name: str, xpath: str) -> None:
    base = Transformations(provide_persons=ALL)
    assert not has(filtered(base), xpath)
    assert has(filtered(Transformations(provide_persons=ALL, attributes=frozenset({name}))), xpath)


def test_tuple_attribute_grants() -> None:
    base = Transformations(provide_services=ALL)
    root = filtered(
        Transformations(provide_services=ALL, attributes=frozenset({"deviceID", "relationship", "note", "class"}))
    )
    assert has(root, "p:tuple[@id='t-sip']/dm:deviceID")
    assert has(root, "p:tuple[@id='t-sip']/r:relationship")
    assert has(root, "p:tuple[@id='t-sip']/p:note")
    assert has(root, "p:tuple[@id='t-tel']/r:class")
    assert not has(root, "p:tuple/caps:servcaps")  # unknown attribute
    assert not has(root, "p:tuple/p:status/foo:legacy")
    assert not has(filtered(base), "p:tuple/dm:deviceID")


def test_presence_level_note_follows_provide_note() -> None:
    assert not has(filtered(Transformations()), "p:note")
    root = filtered(Transformations(attributes=frozenset({"note"})))
    assert [e.text for e in root.xpath("p:note", namespaces=NS)] == ["presence-level note"]
    assert not has(root, "foo:top-level")


@pytest.mark.parametrize(
    ("level", "attrs"),
    [
        ("false", None),
        ("bare", {}),
        ("thresholds", {"idle-threshold": "600"}),
        ("full", {"idle-threshold": "600", "last-input": "2024-03-04T09:55:00Z"}),
    ],
)
def test_user_input_levels(level: str, attrs) -> None:
    root = filtered(Transformations(provide_persons=ALL, provide_user_input=level))
    found = root.xpath("dm:person/r:user-input", namespaces=NS)
    if attrs is None:
        assert found == []
    else:
        assert len(found) == 1 and dict(found[0].attrib) == attrs and found[0].text == "active"


def test_unknown_attribute_grant_by_namespace_and_name() -> None:
    t = via_rules(
        "<pr:provide-services><pr:all-services/></pr:provide-services>"
        "<pr:provide-persons><pr:all-persons/></pr:provide-persons>"
        '<pr:provide-unknown-attribute ns="urn:example:foo" name="hobby">true</pr:provide-unknown-attribute>'
        '<pr:provide-unknown-attribute ns="urn:ietf:params:xml:ns:pidf:caps" name="servcaps">'
        "true</pr:provide-unknown-attribute>"
        '<pr:provide-unknown-attribute ns="urn:example:foo" name="legacy">false</pr:provide-unknown-attribute>'
    )
    root = filtered(t)
    assert has(root, "dm:person/foo:hobby")
    assert has(root, "p:tuple/caps:servcaps/caps:audio")
    assert not has(root, "p:tuple/p:status/foo:legacy")
    assert not has(root, "foo:top-level")
    assert not has(root, "dm:person/r:activities")


def test_unknown_attribute_grant_at_presence_level() -> None:
    root = filtered(Transformations(provide_unknown_attributes=frozenset({("urn:example:foo", "top-level")})))
    assert has(root, "foo:top-level")


def test_provide_all_attributes() -> None:
    t = Transformations(
        provide_services=ALL, provide_persons=grant(("occurrence-id", "p1")), provide_all_attributes=True
    )
    root = filtered(t)
    assert ids(root, "dm:person") == ["p1"] and ids(root, "dm:device") == []
    p1 = root.xpath("dm:person", namespaces=NS)[0]
    original = etree.fromstring(PIDF).xpath("dm:person[@id='p1']", namespaces=NS)[0]
    assert [c.tag for c in p1] == [c.tag for c in original]
    assert dict(p1.find("r:user-input", NS).attrib) == {"idle-threshold": "600", "last-input": "2024-03-04T09:55:00Z"}
    assert has(root, "p:note") and has(root, "foo:top-level")
    assert has(root, "p:tuple/p:status/foo:legacy")


def test_everything_granted_returns_input_unchanged() -> None:
    assert apply_transformations(PIDF, Transformations.full()) == PIDF
    assert apply_transformations(PIDF, via_rules(ALL_GRANTS)) == PIDF


def test_filtered_document_is_well_formed_pidf_and_refilterable() -> None:
    t = Transformations(
        provide_services=grant(("service-uri-scheme", "sip")), provide_persons=ALL, attributes=frozenset({"activities"})
    )
    once = apply_transformations(PIDF, t)
    assert apply_transformations(once, t) == once  # idempotent
    root = etree.fromstring(once)
    assert root.tag == "{urn:ietf:params:xml:ns:pidf}presence"


def test_filtering_a_simple_client_document() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
        b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:bob@example.com">'
        b'<tuple id="a"><status><basic>open</basic></status><contact>sip:bob@10.0.0.2</contact></tuple>'
        b'<dm:person id="p"><rpid:activities><rpid:busy/></rpid:activities></dm:person></presence>'
    )
    out = apply_transformations(body, Transformations(provide_services=ALL))
    assert b"busy" not in out and b"<basic>open</basic>" in out


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<notxml",
        b'<presence xmlns="urn:example:wrong"/>',
        b'<?xml version="1.0"?><!DOCTYPE presence [<!ENTITY a "b">]><presence xmlns="urn:ietf:params:xml:ns:pidf"/>',
    ],
)
def test_not_pidf_raises_body_error(body: bytes) -> None:
    with pytest.raises(BodyError):
        apply_transformations(body, Transformations.full())


# --------------------------------------------------------------------------
# Sphere (RFC 5025 §3.1.2)


def _pidf_with_sphere(sphere_xml: str | None) -> bytes:
    person = f'<dm:person id="p">{sphere_xml}</dm:person>' if sphere_xml is not None else ""
    return (
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@b.example">'
        f'<tuple id="t"><status><basic>open</basic></status></tuple>{person}</presence>'
    ).encode()


def test_compute_sphere() -> None:
    work = _pidf_with_sphere("<rpid:sphere>work</rpid:sphere>")
    work_element = _pidf_with_sphere("<rpid:sphere><rpid:work/></rpid:sphere>")
    home = _pidf_with_sphere("<rpid:sphere><rpid:home/></rpid:sphere>")
    none = _pidf_with_sphere(None)
    assert compute_sphere([work]) == "work"
    assert compute_sphere([work, work_element, none]) == "work"  # all that have one agree
    assert compute_sphere([work, home]) is None  # inconsistent → undefined
    assert compute_sphere([none]) is None
    assert compute_sphere([]) is None
    assert compute_sphere([b"garbage", b"", home]) == "home"  # unparsable ones are skipped
    assert compute_sphere([PIDF]) == "work"


def test_sphere_feeds_evaluation() -> None:
    rules = parse_rules(ruleset(rule("r", conditions='<sphere value="work"/>', sub="allow")))
    sphere = compute_sphere([_pidf_with_sphere("<rpid:sphere>work</rpid:sphere>")])
    assert evaluate(rules, "sip:x@y.example", "sip:a@b.example", now_unix=0, sphere=sphere).sub_handling == "allow"
    sphere = compute_sphere(
        [_pidf_with_sphere("<rpid:sphere>work</rpid:sphere>"), _pidf_with_sphere("<rpid:sphere>home</rpid:sphere>")]
    )
    assert evaluate(rules, "sip:x@y.example", "sip:a@b.example", now_unix=0, sphere=sphere) is None


# --------------------------------------------------------------------------
# Model


def test_transformations_union_and_covers() -> None:
    a = Transformations(
        provide_services=grant(("class", "x")), attributes=frozenset({"mood"}), provide_user_input="bare"
    )
    b = Transformations(provide_services=grant(("class", "y")), provide_persons=ALL, provide_user_input="full")
    u = a | b
    assert u.provide_services == grant(("class", "x"), ("class", "y"))
    assert u.provide_user_input == "full" and u.provide_persons == ALL
    assert u.covers(a) and u.covers(b) and not a.covers(b)
    assert Transformations.full().covers(u)
    assert a | a == a and a | Transformations() == a
    with pytest.raises(ValueError):
        Transformations(provide_user_input="loud")
    with pytest.raises(ValueError):
        Transformations(attributes=frozenset({"shoe-size"}))
    assert ComponentGrant(True, frozenset({Selector("class", "x")})) == ALL
