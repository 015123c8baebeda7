"""PIDF (RFC 3863) with the data model (RFC 4479) and RPID (RFC 4480).

The compositor turns every live publication of a presentity into one
document. Unlike presence_xml it de-duplicates by component id (RFC 3863
§4.1.2 / RFC 4479 §3 require unique ids), keeps persons and devices, and
writes the children in schema order (tuple*, note*, extensions).
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from .xml import (
    XML_DECL,
    BodyError,
    append_children,
    escape_attr,
    local_name,
    new_root,
    parse_document,
    reindent,
)

__all__ = [
    "NS_DM",
    "NS_PIDF",
    "NS_RPID",
    "compose_pidf",
    "dummy_pidf",
    "extract_sphere",
    "filter_pidf",
    "pres_check_activities",
    "pres_check_basic",
    "validate_pidf",
]

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_RPID = "urn:ietf:params:xml:ns:pidf:rpid"

_TUPLE = f"{{{NS_PIDF}}}tuple"
_NOTE = f"{{{NS_PIDF}}}note"
_STATUS = f"{{{NS_PIDF}}}status"
_BASIC = f"{{{NS_PIDF}}}basic"
_CONTACT = f"{{{NS_PIDF}}}contact"
_TIMESTAMP = f"{{{NS_PIDF}}}timestamp"
_PERSON = f"{{{NS_DM}}}person"
_DEVICE = f"{{{NS_DM}}}device"
_DEVICE_ID = f"{{{NS_DM}}}deviceID"
_DM_TIMESTAMP = f"{{{NS_DM}}}timestamp"
_ACTIVITIES = f"{{{NS_RPID}}}activities"
_SPHERE = f"{{{NS_RPID}}}sphere"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Conventional prefixes: some UAs (baresip among them) match `<rpid:busy/>`
# literally instead of parsing namespaces, so the compositor normalises to them.
_CANONICAL = {NS_DM: "dm", NS_RPID: "rpid"}

#: Tuple id of dummy_pidf (an NCName, unlike Kamailio's hex string).
DUMMY_TUPLE_ID = "presenced-offline"


def _parse_pidf(body: bytes) -> etree._Element:
    return parse_document(body, NS_PIDF, "presence", "PIDF presence")


def validate_pidf(body: bytes) -> None:
    """Accept a PUBLISHed PIDF or raise BodyError.

    Strict on what the compositor relies on (well-formed, root `presence` in
    the PIDF namespace), lenient on the rest: a missing `entity` is accepted
    because the compositor rewrites it anyway, and schema slips seen in the
    wild (Linphone's pidf `timestamp` inside `dm:person`, baresip's person
    before its tuple, extension elements inside `status`) are not errors.
    What RFC 3863 §4.1 requires of a tuple is checked, since watchers would
    otherwise receive it: an `id`, a `status`, and a `basic` (when present)
    of open or closed.
    """
    root = _parse_pidf(body)
    for t in root.iterchildren(_TUPLE):
        if not (t.get("id") or "").strip():
            raise BodyError("tuple without id")
        status = t.find(_STATUS)
        if status is None:
            raise BodyError("tuple without status")
        basic = status.find(_BASIC)
        if basic is not None and (basic.text or "").strip() not in ("open", "closed"):
            raise BodyError("basic must be open or closed")


def _roots(bodies: Iterable[bytes]) -> list[etree._Element]:
    # A stored publication that no longer parses must not take the whole
    # presentity down with it: skip it, the others still describe the user.
    roots = []
    for body in bodies:
        if not body:
            continue
        try:
            roots.append(_parse_pidf(body))
        except BodyError:
            continue
    return roots


def _select(roots: list[etree._Element]) -> tuple[list, list, list]:
    """Pick the children of the composed document, highest priority first.

    tuple / dm:person / dm:device ids share one id space (they are all xs:ID
    in the schemas), so the first occurrence of an id wins whatever its kind.
    Components without an id cannot clash and are kept. Identical
    presence-level notes are kept once.
    """
    tuples: list[etree._Element] = []
    notes: list[etree._Element] = []
    others: list[etree._Element] = []
    seen_ids: set[str] = set()
    seen_notes: set[tuple[str, str | None]] = set()
    for root in roots:
        for child in root:
            tag = child.tag
            if tag == _TUPLE or tag == _PERSON or tag == _DEVICE:
                ident = child.get("id")
                if ident is not None:
                    ident = ident.strip()
                    if ident in seen_ids:
                        continue
                    seen_ids.add(ident)
                (tuples if tag == _TUPLE else others).append(child)
            elif tag == _NOTE:
                key = ((child.text or "").strip(), child.get(_XML_LANG))
                if key in seen_notes:
                    continue
                seen_notes.add(key)
                notes.append(child)
            else:
                others.append(child)
    return tuples, notes, others


def _compose(entity: str, roots: list[etree._Element]) -> etree._Element:
    tuples, notes, others = _select(roots)
    out = new_root(NS_PIDF, "presence", roots, _CANONICAL, fallback_prefix="pidf")
    out.set("entity", entity)
    append_children(out, tuples + notes + others)
    return out


def _serialize(root: etree._Element) -> bytes:
    return XML_DECL + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def compose_pidf(entity: str, bodies: list[bytes]) -> bytes:
    """One PIDF for all live publications, `bodies` highest priority first.

    Bodies that do not parse are skipped; with none left the result is a
    valid document without tuples (callers wanting a placeholder use
    dummy_pidf).
    """
    return _serialize(_compose(entity, _roots(bodies)))


def dummy_pidf(entity: str) -> bytes:
    """Placeholder for a presentity with no publication.

    Deliberately `closed` with nothing else: Kamailio's dummy claims the user
    is available, which is a lie a watcher would act on.
    """
    return (
        XML_DECL
        + (
            f'<presence xmlns="{NS_PIDF}" entity="{escape_attr(entity)}">\n'
            f'  <tuple id="{DUMMY_TUPLE_ID}">\n'
            "    <status><basic>closed</basic></status>\n"
            "  </tuple>\n"
            "</presence>\n"
        ).encode()
    )


def pres_check_basic(bodies: list[bytes], status: str) -> bool:
    """True if a tuple of the composed document has this basic status."""
    want = status.strip().lower()
    tuples, _, _ = _select(_roots(bodies))
    for tup in tuples:
        basic = tup.find(f"{_STATUS}/{_BASIC}")
        if basic is not None and (basic.text or "").strip().lower() == want:
            return True
    return False


def pres_check_activities(bodies: list[bytes], activity: str) -> bool:
    """True if an rpid:activities of the composed document has a child with
    this local name (any namespace, so extension activities match too)."""
    want = activity.strip()
    tuples, _, others = _select(_roots(bodies))
    for component in tuples + others:
        for activities in component.iter(_ACTIVITIES):
            for child in activities:
                if local_name(child.tag) == want:
                    return True
    return False


# What survives in a component when no attribute permission is granted:
# identity and reachability, which RFC 5025 has no provide-* permission for.
_BARE_TUPLE = {_STATUS, _CONTACT, _TIMESTAMP}
_BARE_PERSON = {_DM_TIMESTAMP, _TIMESTAMP}
_BARE_DEVICE = {_DEVICE_ID, _DM_TIMESTAMP, _TIMESTAMP}


def _strip_attributes(component: etree._Element, keep: set[str]) -> None:
    for child in list(component):
        if child.tag not in keep:
            component.remove(child)
        elif child.tag == _STATUS:
            for sub in list(child):
                if sub.tag != _BASIC:
                    child.remove(sub)
    for name in list(component.attrib):
        if name != "id":
            del component.attrib[name]


def filter_pidf(
    body: bytes,
    *,
    provide_services: bool = True,
    provide_persons: bool = True,
    provide_devices: bool = True,
    provide_all_attributes: bool = True,
) -> bytes:
    """Apply RFC 5025 §3.3 component permissions to a (composed) PIDF.

    A False component flag withholds every tuple / dm:person / dm:device.
    provide_all_attributes=False keeps only what no attribute permission
    covers: ids, a tuple's basic status, contact and timestamp, a device's
    deviceID and timestamp, a person's timestamp; presence-level notes and
    unknown presence-level extensions are withheld too.
    """
    if provide_services and provide_persons and provide_devices and provide_all_attributes:
        _parse_pidf(body)
        return bytes(body)
    root = _parse_pidf(body)
    for child in list(root):
        tag = child.tag
        if tag == _TUPLE:
            if not provide_services:
                root.remove(child)
            elif not provide_all_attributes:
                _strip_attributes(child, _BARE_TUPLE)
        elif tag == _PERSON:
            if not provide_persons:
                root.remove(child)
            elif not provide_all_attributes:
                _strip_attributes(child, _BARE_PERSON)
        elif tag == _DEVICE:
            if not provide_devices:
                root.remove(child)
            elif not provide_all_attributes:
                _strip_attributes(child, _BARE_DEVICE)
        elif not provide_all_attributes:
            root.remove(child)
    reindent(root)
    return _serialize(root)


def extract_sphere(body: bytes) -> str | None:
    """The RPID sphere of the first person that has one (RFC 4480 §3.17).

    The sphere is either a token (`<rpid:sphere>meeting</rpid:sphere>`) or an
    empty `work`/`home` element; both come back as a plain string so the
    RFC 5025 sphere condition can compare values.
    """
    root = _parse_pidf(body)
    for person in root.iterchildren(_PERSON):
        sphere = person.find(_SPHERE)
        if sphere is None:
            continue
        text = (sphere.text or "").strip()
        if text:
            return text
        for child in sphere:
            return local_name(child.tag)
    return None
