"""reginfo (RFC 3680) for the `reg` package: validation, composition of
publications (pua_reginfo style) and rendering for the built-in registrar."""

from __future__ import annotations

import zlib

from dataclasses import dataclass

from lxml import etree

from .xml import (
    XML_DECL,
    BodyError,
    VersionedBody,
    append_children,
    escape_attr,
    escape_text,
    new_root,
    parse_document,
)

__all__ = [
    "NS_REGINFO",
    "ContactEntry",
    "compose_reginfo",
    "reginfo_id",
    "render_reginfo",
    "validate_reginfo",
]

NS_REGINFO = "urn:ietf:params:xml:ns:reginfo"

_REGISTRATION = f"{{{NS_REGINFO}}}registration"
_CONTACT = f"{{{NS_REGINFO}}}contact"
_URI = f"{{{NS_REGINFO}}}uri"

REGISTRATION_STATES = frozenset({"init", "active", "terminated"})
CONTACT_STATES = frozenset({"active", "terminated"})
CONTACT_EVENTS = frozenset(
    {
        "registered",
        "created",
        "refreshed",
        "shortened",
        "expired",
        "deactivated",
        "probation",
        "unregistered",
        "rejected",
    }
)
_UNSIGNED_ATTRS = ("expires", "duration-registered", "cseq", "retry-after")
_MAX_DIGITS = 20


def _unsigned(value: str | None) -> bool:
    if value is None:
        return True
    value = value.strip()
    return value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS


def _parse_root(body: bytes) -> etree._Element:
    return parse_document(body, NS_REGINFO, "reginfo")


def validate_reginfo(body: bytes) -> None:
    """Accept a PUBLISHed reginfo or raise BodyError.

    Same policy as dialog-info: `state` required (full|partial), `version`
    optional because it is replaced per subscriber; every registration needs
    aor, id and a known state, every contact id, a known state and event and
    a `uri`; numeric attributes must be unsigned integers.
    """
    root = _parse_root(body)
    state = root.get("state")
    if state is None:
        raise BodyError("reginfo without state attribute")
    if state not in ("full", "partial"):
        raise BodyError("reginfo state must be full or partial")
    if not _unsigned(root.get("version")):
        raise BodyError("reginfo version must be a non-negative integer")
    for reg in root.iterchildren(_REGISTRATION):
        if not (reg.get("aor") or "").strip():
            raise BodyError("registration without aor")
        if not (reg.get("id") or "").strip():
            raise BodyError("registration without id")
        if reg.get("state") not in REGISTRATION_STATES:
            raise BodyError("registration state must be init, active or terminated")
        for contact in reg.iterchildren(_CONTACT):
            if not (contact.get("id") or "").strip():
                raise BodyError("contact without id")
            if contact.get("state") not in CONTACT_STATES:
                raise BodyError("contact state must be active or terminated")
            if contact.get("event") not in CONTACT_EVENTS:
                raise BodyError("unknown contact event")
            for name in _UNSIGNED_ATTRS:
                if not _unsigned(contact.get(name)):
                    raise BodyError(f"contact {name} must be a non-negative integer")
            if contact.find(_URI) is None:
                raise BodyError("contact without uri")


def compose_reginfo(entity: str, bodies: list[bytes]) -> VersionedBody:
    """Full-state reginfo for all publications, `bodies` highest priority first.

    One registration per AoR (RFC 3680 §5.1): the highest-priority
    publication's view of an AoR replaces older views wholesale (publishers
    such as pua_reginfo report every contact of the AoR), and a registration
    id is never emitted twice. `entity` is accepted for a uniform compose
    signature; reginfo has no entity attribute. Unparsable bodies are skipped.
    """
    del entity
    roots = []
    for body in bodies:
        if not body:
            continue
        try:
            roots.append(_parse_root(body))
        except BodyError:
            continue
    registrations: list[etree._Element] = []
    others: list[etree._Element] = []
    seen_aors: set[str] = set()
    seen_ids: set[str] = set()
    for root in roots:
        for child in root:
            if child.tag != _REGISTRATION:
                others.append(child)
                continue
            aor = (child.get("aor") or "").strip()
            ident = (child.get("id") or "").strip()
            if not aor or aor in seen_aors or (ident and ident in seen_ids):
                continue
            seen_aors.add(aor)
            if ident:
                seen_ids.add(ident)
            registrations.append(child)
    out = new_root(NS_REGINFO, "reginfo", roots, fallback_prefix="ri")
    out.set("version", "0")
    out.set("state", "full")
    append_children(out, registrations + others)
    return VersionedBody.from_root(out)


@dataclass(slots=True)
class ContactEntry:
    id: str
    uri: str
    state: str
    event: str
    expires: int | None = None
    q: str | None = None
    callid: str | None = None
    cseq: int | None = None
    duration_registered: int | None = None


def _uint_attr(name: str, value: int | None) -> str:
    if value is None:
        return ""
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0")
    return f' {name}="{int(value)}"'


def reginfo_id(aor: str) -> str:
    """The `registration` id of an AoR: stable, so a watcher sees one
    registration go from init to active and back."""
    return "r%08x" % zlib.crc32(aor.encode())


def render_reginfo(aor: str, reg_id: str, reg_state: str, contacts: list[ContactEntry]) -> VersionedBody:
    """Full-state reginfo for one AoR of the built-in registrar.

    Enumerated values are checked (ValueError) because a typo here would
    reach every subscriber as a schema-invalid document.
    """
    if reg_state not in REGISTRATION_STATES:
        raise ValueError(f"invalid registration state {reg_state!r}")
    parts = [
        f'" state="full">\n  <registration aor="{escape_attr(aor)}" id="{escape_attr(reg_id)}"'
        f' state="{reg_state}"'
    ]
    if not contacts:
        parts.append("/>\n</reginfo>\n")
    else:
        parts.append(">\n")
        for c in contacts:
            if c.state not in CONTACT_STATES:
                raise ValueError(f"invalid contact state {c.state!r}")
            if c.event not in CONTACT_EVENTS:
                raise ValueError(f"invalid contact event {c.event!r}")
            parts.append(f'    <contact id="{escape_attr(c.id)}" state="{c.state}" event="{c.event}"')
            parts.append(_uint_attr("expires", c.expires))
            if c.q is not None:
                parts.append(f' q="{escape_attr(str(c.q))}"')
            if c.callid is not None:
                parts.append(f' callid="{escape_attr(c.callid)}"')
            parts.append(_uint_attr("cseq", c.cseq))
            parts.append(_uint_attr("duration-registered", c.duration_registered))
            parts.append(f">\n      <uri>{escape_text(c.uri)}</uri>\n    </contact>\n")
        parts.append("  </registration>\n</reginfo>\n")
    head = XML_DECL + f'<reginfo xmlns="{NS_REGINFO}" version="'.encode()
    return VersionedBody(head, "".join(parts).encode("utf-8"))
