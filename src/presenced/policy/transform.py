"""RFC 5025 §3.3 transformations applied to a PIDF document, and the
RFC 5025 §3.1.2 sphere of a presentity.

Permissions are positive grants (default deny):

* a `<tuple>` / `<dm:person>` / `<dm:device>` is withheld unless the matching
  provide-services / provide-persons / provide-devices selects it (`all-*`,
  or one of its selectors: `occurrence-id` = the component's `id`, `class` =
  its `<rpid:class>`, `service-uri` = the tuple's `<contact>` compared with
  RFC 3261 URI rules, `service-uri-scheme` = the scheme of that contact,
  `deviceID` = the device's `<dm:deviceID>`);
* inside a provided component, every presence attribute is withheld unless
  granted: the RPID elements by their provide-<name> permission, `<note>`
  (pidf or dm) by provide-note, a tuple's `<dm:deviceID>` by
  provide-deviceID, `<rpid:user-input>` by the provide-user-input level
  (bare: no `idle-threshold`/`last-input`; thresholds: no `last-input`),
  anything else (including RPID elements RFC 5025 has no permission for, such
  as `service-class`) by provide-unknown-attribute for its namespace + local
  name; provide-all-attributes grants all of them;
* what identifies or reaches a component is not an attribute and stays with
  it: the `id`, a tuple's `<status><basic>`, `<contact>` and `<timestamp>`,
  a device's `<dm:deviceID>` (mandatory in the data model) and the
  timestamps of persons and devices;
* presence-level `<note>`s follow provide-note; other presence-level
  extension elements are unknown attributes.

Selectors are matched against the original component before attributes are
stripped, so `class` selects even when provide-class is not granted.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from presenced.events.formats.pidf import NS_DM, NS_PIDF, NS_RPID
from presenced.events.formats.xml import XML_DECL, BodyError, parse_xml, reindent
from presenced.sip.errors import SipParseError
from presenced.sip.uri import parse_uri

from .model import ATTRIBUTE_NAMES, ComponentGrant, Selector, Transformations

__all__ = ["apply_transformations", "compute_sphere", "pidf_sphere_values"]

_PRESENCE = f"{{{NS_PIDF}}}presence"
_TUPLE = f"{{{NS_PIDF}}}tuple"
_STATUS = f"{{{NS_PIDF}}}status"
_BASIC = f"{{{NS_PIDF}}}basic"
_CONTACT = f"{{{NS_PIDF}}}contact"
_NOTE = f"{{{NS_PIDF}}}note"
_TIMESTAMP = f"{{{NS_PIDF}}}timestamp"
_PERSON = f"{{{NS_DM}}}person"
_DEVICE = f"{{{NS_DM}}}device"
_DEVICE_ID = f"{{{NS_DM}}}deviceID"
_DM_NOTE = f"{{{NS_DM}}}note"
_DM_TIMESTAMP = f"{{{NS_DM}}}timestamp"
_CLASS = f"{{{NS_RPID}}}class"
_SPHERE = f"{{{NS_RPID}}}sphere"
_USER_INPUT = f"{{{NS_RPID}}}user-input"

#: RPID elements with their own RFC 5025 permission (name = provide-<name>):
#: every attribute permission except the data-model ones (deviceID, note).
_RPID_ATTRIBUTES = {f"{{{NS_RPID}}}{name}": name for name in ATTRIBUTE_NAMES - {"deviceID", "note"}}

_ALWAYS = "always"
_UNKNOWN = "unknown"
_USER_INPUT_KIND = "user-input"

_ALWAYS_BY_COMPONENT = {
    _TUPLE: frozenset({_STATUS, _CONTACT, _TIMESTAMP, _DM_TIMESTAMP}),
    _PERSON: frozenset({_DM_TIMESTAMP, _TIMESTAMP}),
    _DEVICE: frozenset({_DEVICE_ID, _DM_TIMESTAMP, _TIMESTAMP}),
}


def _parse_pidf(body: bytes) -> etree._Element:
    root = parse_xml(body)
    if root.tag != _PRESENCE:
        raise BodyError(f"root element is not PIDF presence ({NS_PIDF})")
    return root


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _classify(component_tag: str, tag: str) -> str:
    if tag in _ALWAYS_BY_COMPONENT.get(component_tag, ()):
        return _ALWAYS
    name = _RPID_ATTRIBUTES.get(tag)
    if name is not None:
        return name
    if tag in (_NOTE, _DM_NOTE):
        return "note"
    if tag == _DEVICE_ID:
        return "deviceID"
    if tag == _USER_INPUT:
        return _USER_INPUT_KIND
    return _UNKNOWN


def _grants_unknown(t: Transformations, tag: str) -> bool:
    return t.provide_all_attributes or _split(tag) in t.provide_unknown_attributes


def _child_text(component: etree._Element, tag: str) -> str | None:
    child = component.find(tag)
    if child is None:
        return None
    return "".join(child.itertext()).strip()


def _norm_device_id(value: str) -> str:
    value = value.strip()
    # urn:uuid values are case-insensitive hex (RFC 4122 §3); other URNs are
    # compared as written apart from the case-insensitive "urn:" NID.
    if value[:9].lower() == "urn:uuid:":
        return value.lower()
    return value


def _same_uri(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return parse_uri(a).equals(parse_uri(b))
    except (SipParseError, ValueError):
        return False


def _selected(component: etree._Element, grant: ComponentGrant) -> bool:
    if grant.all:
        return True
    if grant.none:
        return False
    occurrence = (component.get("id") or "").strip()
    klass = _child_text(component, _CLASS)
    contact = _child_text(component, _CONTACT) if component.tag == _TUPLE else None
    device_id = _child_text(component, _DEVICE_ID) if component.tag == _DEVICE else None
    return any(_matches(s, occurrence, klass, contact, device_id) for s in grant.selectors)


def _matches(
    selector: Selector, occurrence: str, klass: str | None, contact: str | None, device_id: str | None
) -> bool:
    kind, value = selector.kind, selector.value
    if kind == "occurrence-id":
        return bool(occurrence) and occurrence == value
    if kind == "class":
        return klass is not None and klass == value
    if kind == "service-uri":
        return bool(contact) and _same_uri(contact, value)
    if kind == "service-uri-scheme":
        if not contact or ":" not in contact:
            return False
        return contact.split(":", 1)[0].strip().lower() == value.lower()
    if kind == "deviceID":
        return bool(device_id) and _norm_device_id(device_id) == _norm_device_id(value)
    return False


def _filter_user_input(element: etree._Element, level: int) -> bool:
    """Apply a provide-user-input level (1 bare, 2 thresholds, 3 full) in
    place; True if something was removed."""
    drop = {1: ("idle-threshold", "last-input"), 2: ("last-input",)}.get(level, ())
    changed = False
    for name in drop:
        if name in element.attrib:
            del element.attrib[name]
            changed = True
    return changed


def _keep_attribute(kind: str, element: etree._Element, t: Transformations) -> tuple[bool, bool]:
    """(keep, changed-in-place) for one attribute element."""
    if kind == _UNKNOWN:
        return _grants_unknown(t, element.tag), False
    if kind == _USER_INPUT_KIND:
        level = t.user_input_level
        if level == 0:
            return False, False
        return True, _filter_user_input(element, level)
    return t.grants_attribute(kind), False


def _filter_attributes(component: etree._Element, t: Transformations) -> bool:
    changed = False
    for child in list(component):
        if not isinstance(child.tag, str):  # pragma: no cover - parser drops them
            continue
        kind = _classify(component.tag, child.tag)
        if kind == _ALWAYS:
            if child.tag == _STATUS:
                changed |= _filter_status(child, t)
            continue
        keep, modified = _keep_attribute(kind, child, t)
        if keep:
            changed |= modified
        else:
            component.remove(child)
            changed = True
    return changed


def _filter_status(status: etree._Element, t: Transformations) -> bool:
    # <basic> is the tuple's reachability; extension elements inside <status>
    # (RPID or legacy IM states) are attributes like any other.
    changed = False
    for child in list(status):
        if not isinstance(child.tag, str) or child.tag == _BASIC:
            continue
        keep, modified = _keep_attribute(_classify("", child.tag), child, t)
        if keep:
            changed |= modified
        else:
            status.remove(child)
            changed = True
    return changed


def apply_transformations(pidf_body: bytes, t: Transformations) -> bytes:
    """The PIDF a watcher granted `t` may see (RFC 5025 §3.3, default deny).

    Raises BodyError if `pidf_body` is not a PIDF document. When nothing is
    withheld the input bytes are returned unchanged. Apply it once, to the
    composed document: selectors look at elements (`<rpid:class>`, a tuple's
    `<dm:deviceID>`) that the attribute filter may then strip, so filtering
    the output again can withhold more.
    """
    root = _parse_pidf(pidf_body)
    changed = False
    for child in list(root):
        tag = child.tag
        if not isinstance(tag, str):  # pragma: no cover - parser drops them
            continue
        if tag == _TUPLE:
            keep = _selected(child, t.provide_services)
        elif tag == _PERSON:
            keep = _selected(child, t.provide_persons)
        elif tag == _DEVICE:
            keep = _selected(child, t.provide_devices)
        elif tag == _NOTE:
            keep = t.grants_attribute("note")
        else:
            keep = _grants_unknown(t, tag)
        if not keep:
            root.remove(child)
            changed = True
        elif tag in _ALWAYS_BY_COMPONENT:
            changed |= _filter_attributes(child, t)
    if not changed:
        return bytes(pidf_body)
    reindent(root)
    return XML_DECL + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


# --------------------------------------------------------------------------
# Sphere (RFC 5025 §3.1.2)


def pidf_sphere_values(body: bytes) -> list[str]:
    """Every RPID sphere of the person components of one PIDF document.

    A sphere is either a token (`<rpid:sphere>meeting</rpid:sphere>`) or an
    empty `<rpid:work/>`/`<rpid:home/>` child; both come back as a string.
    Raises BodyError for a body that is not PIDF.
    """
    root = _parse_pidf(body)
    values: list[str] = []
    for person in root.iterchildren(_PERSON):
        for sphere in person.iterchildren(_SPHERE):
            text = (sphere.text or "").strip()
            if text:
                values.append(text)
                continue
            for child in sphere:
                if isinstance(child.tag, str):
                    values.append(_split(child.tag)[1])
                    break
    return values


def compute_sphere(bodies: Iterable[bytes]) -> str | None:
    """The presentity's sphere for policy evaluation (RFC 5025 §3.1.2).

    Looks at every live publication: if at least one person component has a
    sphere and all of them agree (compared case-insensitively), that value;
    if none has one, or they disagree, None ("undefined", so sphere
    conditions do not match). Publications that do not parse are skipped.
    """
    found: str | None = None
    for body in bodies:
        if not body:
            continue
        try:
            values = pidf_sphere_values(body)
        except BodyError:
            continue
        for value in values:
            if found is None:
                found = value
            elif value.casefold() != found.casefold():
                return None
    return found
