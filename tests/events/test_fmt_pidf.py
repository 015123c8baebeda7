"""PIDF validation, composition and helpers, driven by real client bodies."""

from __future__ import annotations

import pytest
from formats_support import CLIENT_BODIES, load, trace_pidf_bodies
from lxml import etree

from presenced.events.formats.pidf import (
    NS_DM,
    NS_PIDF,
    NS_RPID,
    compose_pidf,
    dummy_pidf,
    extract_sphere,
    filter_pidf,
    pres_check_activities,
    pres_check_basic,
    validate_pidf,
)
from presenced.events.formats.xml import BodyError, parse_xml

P = f"{{{NS_PIDF}}}"
DM = f"{{{NS_DM}}}"
R = f"{{{NS_RPID}}}"
ENTITY = "sip:alice@example.com"


def pidf(children: str, *, extra_ns: str = "", entity: str = "sip:pub@example.com") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" xmlns:rpid="{NS_RPID}" {extra_ns}'
        f' entity="{entity}">{children}</presence>'
    ).encode()


def tuple_(tid: str, basic: str = "open", contact: str = "sip:x@example.com") -> str:
    return f'<tuple id="{tid}"><status><basic>{basic}</basic></status><contact>{contact}</contact></tuple>'


def ids(root, tag: str) -> list[str]:
    return [el.get("id") for el in root.iterchildren(tag)]


def shape(el) -> tuple:
    """Namespace-aware structure of an element, ignoring formatting and order
    of top-level components."""
    text = (el.text or "").strip()
    kids = tuple(shape(c) for c in el)
    return (el.tag, tuple(sorted(el.attrib.items())), text, kids)


# -- validation ------------------------------------------------------------


@pytest.mark.parametrize("name", CLIENT_BODIES)
def test_client_bodies_validate(name):
    validate_pidf(load(name))


def test_every_body_in_the_shared_traces_validates():
    bodies = trace_pidf_bodies()
    if not bodies:
        pytest.skip("client traces not available")
    for body in bodies:
        validate_pidf(body)


def test_missing_entity_is_accepted():
    validate_pidf(f'<presence xmlns="{NS_PIDF}"><tuple id="a"><status/></tuple></presence>'.encode())


@pytest.mark.parametrize(
    "body,needle",
    [
        (b'<presence entity="sip:a@b"><tuple id="a"/></presence>', "namespace"),
        (b'<presence xmlns="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@b"/>', "namespace"),
        (f'<dialog-info xmlns="{NS_PIDF}"/>'.encode(), "not PIDF"),
        (f'<presence xmlns="{NS_PIDF}"><tuple></presence>'.encode(), "malformed"),
        (b"", "empty"),
        # RFC 3863 §4.1: what watchers would otherwise receive
        (f'<presence xmlns="{NS_PIDF}" entity="sip:a@b"><tuple><status/></tuple></presence>'.encode(), "without id"),
        (f'<presence xmlns="{NS_PIDF}" entity="sip:a@b"><tuple id="b"/></presence>'.encode(), "without status"),
        (f'<presence xmlns="{NS_PIDF}" entity="sip:a@b"><tuple id="b"><status><basic>busy</basic></status></tuple></presence>'.encode(), "open or closed"),
    ],
)
def test_invalid_pidf_rejected(body, needle):
    with pytest.raises(BodyError) as info:
        validate_pidf(body)
    assert needle in info.value.reason


# -- composition -----------------------------------------------------------


def test_compose_baresip_and_linphone_keeps_both(baresip_open, linphone_busy):
    out = compose_pidf(ENTITY, [linphone_busy, baresip_open])
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = parse_xml(out)
    validate_pidf(out)
    assert root.get("entity") == ENTITY
    assert ids(root, P + "tuple") == ["fhv3.6", "t4109"]
    assert ids(root, DM + "person") == ["dsjcm8", "p4159"]
    assert root.find(f"{DM}person/{R}activities/{R}busy") is not None
    # the literal form baresip-style parsers look for
    assert b"<rpid:busy/>" in out
    assert b"<basic>open</basic>" in out


def test_compose_rewrites_entity(baresip_open):
    root = parse_xml(compose_pidf(ENTITY, [baresip_open]))
    assert root.get("entity") == ENTITY


def test_compose_escapes_entity(baresip_open):
    entity = 'sip:a&b"<c>@example.com'
    assert parse_xml(compose_pidf(entity, [baresip_open])).get("entity") == entity


def test_compose_single_body_is_equivalent(linphone_online, linphone_busy, baresip_open):
    for body in (linphone_online, linphone_busy, baresip_open):
        src = parse_xml(body)
        out = parse_xml(compose_pidf(src.get("entity"), [body]))
        assert sorted(shape(c) for c in out) == sorted(shape(c) for c in src)
        assert dict(out.attrib) == dict(src.attrib)


def test_compose_preserves_foreign_namespaces(linphone_online, baresip_open):
    out = compose_pidf(ENTITY, [linphone_online, baresip_open])
    root = parse_xml(out)
    online = root.find(f"{P}tuple/{P}status/{{http://www.linphone.org/xsds/pidfonline.xsd}}online")
    assert online is not None
    assert b"pidfonline:online" in out


def test_duplicate_tuple_id_first_body_wins(baresip_open, baresip_closed):
    # same publisher, same tuple and person ids: newest (first) wins
    root = parse_xml(compose_pidf(ENTITY, [baresip_closed, baresip_open]))
    assert ids(root, P + "tuple") == ["t4109"]
    assert ids(root, DM + "person") == ["p4159"]
    assert root.findtext(f"{P}tuple/{P}status/{P}basic") == "closed"
    root = parse_xml(compose_pidf(ENTITY, [baresip_open, baresip_closed]))
    assert root.findtext(f"{P}tuple/{P}status/{P}basic") == "open"


def test_ids_are_unique_across_component_kinds():
    a = pidf(tuple_("x") + '<dm:person id="p"/>')
    b = pidf(
        '<dm:person id="x"/><dm:device id="p"><dm:deviceID>urn:d</dm:deviceID></dm:device>'
        '<dm:device id="d2"><dm:deviceID>urn:e</dm:deviceID></dm:device>'
    )
    root = parse_xml(compose_pidf(ENTITY, [a, b]))
    all_ids = [el.get("id") for el in root if el.get("id") is not None]
    assert sorted(all_ids) == ["d2", "p", "x"]
    assert root.find(P + "tuple").get("id") == "x"


def test_duplicate_ids_within_one_body_collapse():
    body = pidf(tuple_("a", "open") + tuple_("a", "closed"))
    root = parse_xml(compose_pidf(ENTITY, [body]))
    assert ids(root, P + "tuple") == ["a"]
    assert root.findtext(f"{P}tuple/{P}status/{P}basic") == "open"


def test_children_in_schema_order_and_notes_deduplicated():
    a = pidf('<dm:person id="p1"/><note>Lunch</note>' + tuple_("t1"))
    b = pidf('<note>Lunch</note><note xml:lang="fr">Déjeuner</note>' + tuple_("t2"))
    root = parse_xml(compose_pidf(ENTITY, [a, b]))
    assert [etree.QName(c).localname for c in root] == ["tuple", "tuple", "note", "note", "person"]
    assert [n.text for n in root.iterchildren(P + "note")] == ["Lunch", "Déjeuner"]


def test_prefix_clash_between_publications_stays_correct():
    a = pidf(tuple_("t1").replace("</status>", "<x:e>A</x:e></status>"), extra_ns='xmlns:x="urn:a"')
    b = pidf(tuple_("t2").replace("</status>", "<x:e>B</x:e></status>"), extra_ns='xmlns:x="urn:b"')
    root = parse_xml(compose_pidf(ENTITY, [a, b]))
    assert root.findtext(f"{P}tuple/{P}status/{{urn:a}}e") == "A"
    assert root.findtext(f"{P}tuple[@id='t2']/{P}status/{{urn:b}}e") == "B"


def test_other_rpid_prefix_normalised_and_resolved():
    body = (
        f'<p:presence xmlns:p="{NS_PIDF}" xmlns:r="{NS_RPID}" xmlns:d="{NS_DM}" entity="sip:a@b">'
        '<p:tuple id="t"><p:status><p:basic>open</p:basic></p:status></p:tuple>'
        '<d:person id="p"><r:activities><r:away/></r:activities></d:person></p:presence>'
    ).encode()
    out = compose_pidf(ENTITY, [body])
    assert b"<rpid:away/>" in out and b"<basic>open</basic>" in out
    assert pres_check_activities([out], "away")


def test_unqualified_elements_keep_no_namespace():
    body = (
        f'<p:presence xmlns:p="{NS_PIDF}" entity="sip:a@b">'
        '<p:tuple id="t"><p:status><p:basic>open</p:basic><custom/></p:status></p:tuple>'
        "<vendor>v</vendor></p:presence>"
    ).encode()
    root = parse_xml(compose_pidf(ENTITY, [body, load("baresip-publish-open.xml")]))
    assert root.find(f"{P}tuple/{P}status/custom") is not None
    assert root.find("vendor") is not None
    assert ids(root, P + "tuple") == ["t", "t4109"]


def test_unparsable_publication_is_skipped(baresip_open):
    root = parse_xml(compose_pidf(ENTITY, [b"<broken", b"", baresip_open, b"<x/>"]))
    assert ids(root, P + "tuple") == ["t4109"]


def test_compose_nothing_is_a_valid_empty_document():
    out = compose_pidf(ENTITY, [])
    validate_pidf(out)
    root = parse_xml(out)
    assert root.get("entity") == ENTITY and len(root) == 0


# -- dummy -----------------------------------------------------------------


def test_dummy_is_closed_and_valid():
    entity = 'sip:o"dd&<x>@example.com'
    out = dummy_pidf(entity)
    validate_pidf(out)
    root = parse_xml(out)
    assert root.get("entity") == entity
    assert [t.findtext(f"{P}status/{P}basic") for t in root.iter(P + "tuple")] == ["closed"]
    assert not pres_check_basic([out], "open")
    assert pres_check_basic([out], "closed")


# -- checks ----------------------------------------------------------------


def test_pres_check_basic(baresip_open, baresip_closed, linphone_online):
    assert pres_check_basic([baresip_open], "open")
    assert not pres_check_basic([baresip_closed], "open")
    assert pres_check_basic([baresip_closed, linphone_online], "open")
    assert pres_check_basic([baresip_closed], " CLOSED ")
    # the newer closed tuple hides the older open one with the same id
    assert not pres_check_basic([baresip_closed, baresip_open], "open")
    assert not pres_check_basic([], "open")


def test_pres_check_activities(baresip_open, linphone_busy):
    assert pres_check_activities([baresip_open, linphone_busy], "busy")
    assert not pres_check_activities([baresip_open], "busy")
    assert not pres_check_activities([linphone_busy], "away")


# -- filtering (RFC 5025) --------------------------------------------------

RICH = pidf(
    '<tuple id="t1"><status><basic>open</basic><rpid:x/></status><contact>sip:t@h</contact>'
    "<note>tuple note</note><timestamp>2026-01-01T00:00:00Z</timestamp></tuple>"
    "<note>presence note</note>"
    '<dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities>'
    "<rpid:mood><rpid:happy/></rpid:mood><dm:timestamp>2026-01-01T00:00:00Z</dm:timestamp></dm:person>"
    '<dm:device id="d1"><rpid:user-input>idle</rpid:user-input><dm:deviceID>urn:uuid:1</dm:deviceID>'
    "</dm:device>"
    '<x:ext xmlns:x="urn:x">secret</x:ext>'
)


def test_filter_everything_allowed_is_identity():
    assert filter_pidf(RICH) == RICH


def test_filter_rejects_non_pidf():
    with pytest.raises(BodyError):
        filter_pidf(b"<a/>")


@pytest.mark.parametrize(
    "flag,gone",
    [("provide_services", "tuple"), ("provide_persons", "person"), ("provide_devices", "device")],
)
def test_filter_withholds_components(flag, gone):
    root = parse_xml(filter_pidf(RICH, **{flag: False}))
    kinds = {etree.QName(c).localname for c in root}
    assert gone not in kinds
    assert {"tuple", "person", "device"} - {gone} <= kinds


def test_filter_without_attributes_keeps_only_the_skeleton():
    out = filter_pidf(RICH, provide_all_attributes=False)
    validate_pidf(out)
    root = parse_xml(out)
    assert [etree.QName(c).localname for c in root] == ["tuple", "person", "device"]
    tup = root.find(P + "tuple")
    assert [etree.QName(c).localname for c in tup] == ["status", "contact", "timestamp"]
    assert [etree.QName(c).localname for c in tup.find(P + "status")] == ["basic"]
    person = root.find(DM + "person")
    assert [etree.QName(c).localname for c in person] == ["timestamp"]
    device = root.find(DM + "device")
    assert [etree.QName(c).localname for c in device] == ["deviceID"]
    assert b"secret" not in out and b"busy" not in out


# -- sphere ----------------------------------------------------------------


@pytest.mark.parametrize(
    "person,expected",
    [
        ('<dm:person id="p"><rpid:sphere>meeting</rpid:sphere></dm:person>', "meeting"),
        ('<dm:person id="p"><rpid:sphere><rpid:work/></rpid:sphere></dm:person>', "work"),
        ('<dm:person id="p"><rpid:sphere> home </rpid:sphere></dm:person>', "home"),
        ('<dm:person id="p"><rpid:activities/></dm:person>', None),
        ("", None),
    ],
)
def test_extract_sphere(person, expected):
    assert extract_sphere(pidf(tuple_("t") + person)) == expected


def test_extract_sphere_ignores_other_namespaces():
    body = pidf('<dm:person id="p"><s:sphere xmlns:s="urn:other">work</s:sphere></dm:person>')
    assert extract_sphere(body) is None


def test_extract_sphere_from_client_bodies(baresip_open, linphone_busy):
    assert extract_sphere(baresip_open) is None
    assert extract_sphere(linphone_busy) is None
