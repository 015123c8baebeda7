"""dialog-info (RFC 4235) for the `dialog` and `dialog;sla` packages.

BLF lamps are driven by these documents, so the compositor's job is to never
show a dialog twice and never let a dialog go back to an earlier state
because publications arrived out of order (Kamailio issue #3192).
"""

from __future__ import annotations

import copy

from lxml import etree

from .xml import BodyError, VersionedBody, append_children, new_root, parse_document, reindent

__all__ = [
    "NS_DIALOG_INFO",
    "SINGLE_DIALOG_PREFERENCE",
    "compose_dialoginfo",
    "compose_dialoginfo_sla",
    "dummy_dialoginfo",
    "keep_terminated",
    "merge_partial",
    "only_dialogs",
    "validate_dialoginfo",
]

NS_DIALOG_INFO = "urn:ietf:params:xml:ns:dialog-info"

_DIALOG = f"{{{NS_DIALOG_INFO}}}dialog"
_STATE = f"{{{NS_DIALOG_INFO}}}state"

#: RFC 4235 §3.7.1 state machine order; a dialog only ever moves forward.
_PROGRESS = {"trying": 0, "proceeding": 1, "early": 2, "confirmed": 3, "terminated": 4}

#: Which dialog survives force_single_dialog, best first. This is Kamailio's
#: presence_dialoginfo order (spec §15.1): a ringing call beats an established
#: one so BLF keys can offer call pickup.
SINGLE_DIALOG_PREFERENCE: tuple[str, ...] = ("early", "confirmed", "proceeding", "trying", "terminated")

_DIRECTIONS = {"initiator", "recipient"}
_MAX_VERSION_DIGITS = 20


def _dialog_state(dialog: etree._Element) -> str:
    state = dialog.find(_STATE)
    if state is None:
        return ""
    return (state.text or "").strip().lower()


def _parse_root(body: bytes) -> etree._Element:
    return parse_document(body, NS_DIALOG_INFO, "dialog-info")


def validate_dialoginfo(body: bytes) -> None:
    """Accept a PUBLISHed dialog-info or raise BodyError.

    Required: root `dialog-info` in the RFC 4235 namespace with `state`
    (full|partial) and a non-empty `entity`; every `dialog` has an `id`, a
    known `state` and, if present, a valid `direction`. `version` may be
    missing (it is replaced per subscriber anyway, and some publishers omit
    it) but must be a non-negative integer when present. State values are
    compared case-insensitively.
    """
    root = _parse_root(body)
    state = root.get("state")
    if state is None:
        raise BodyError("dialog-info without state attribute")
    if state not in ("full", "partial"):
        raise BodyError("dialog-info state must be full or partial")
    if not (root.get("entity") or "").strip():
        raise BodyError("dialog-info without entity attribute")
    version = root.get("version")
    if version is not None:
        version = version.strip()
        if not version.isascii() or not version.isdigit() or len(version) > _MAX_VERSION_DIGITS:
            raise BodyError("dialog-info version must be a non-negative integer")
    for dialog in root.iterchildren(_DIALOG):
        if not (dialog.get("id") or "").strip():
            raise BodyError("dialog without id")
        direction = dialog.get("direction")
        if direction is not None and direction.strip() not in _DIRECTIONS:
            raise BodyError("dialog direction must be initiator or recipient")
        state_el = dialog.find(_STATE)
        if state_el is None:
            raise BodyError("dialog without state")
        if (state_el.text or "").strip().lower() not in _PROGRESS:
            raise BodyError("unknown dialog state")


def _roots(bodies: list[bytes]) -> list[etree._Element]:
    roots = []
    for body in bodies:
        if not body:
            continue
        try:
            roots.append(_parse_root(body))
        except BodyError:
            continue
    return roots


def _new_document(entity: str, roots: list[etree._Element]) -> etree._Element:
    out = new_root(NS_DIALOG_INFO, "dialog-info", roots, fallback_prefix="di")
    out.set("version", "0")
    out.set("state", "full")
    out.set("entity", entity)
    return out


def _both_roots(old: bytes, new: bytes) -> tuple[etree._Element, etree._Element] | None:
    """A modified publication's old and new documents, or None if either is unusable."""
    try:
        return _parse_root(old), _parse_root(new)
    except BodyError:
        return None


def keep_terminated(old: bytes, new: bytes) -> bytes:
    """`new` with every dialog that `old` had as terminated kept terminated.

    A publisher that modifies its publication with an earlier state for a
    dialog id it already reported terminated (a reused id, a stale document)
    would otherwise make watchers see a finished call ring again."""
    roots = _both_roots(old, new) if b"terminated" in old else None
    if roots is None:
        return new
    old_root, new_root_ = roots
    ended = {(d.get("id") or "").strip(): d for d in old_root.iter(_DIALOG) if _dialog_state(d) == "terminated"}
    ended.pop("", None)
    changed = False
    for d in list(new_root_.iter(_DIALOG)):
        final = ended.get((d.get("id") or "").strip())
        if final is not None and _dialog_state(d) != "terminated":
            parent = d.getparent()
            if parent is not None:
                parent.replace(d, copy.deepcopy(final))
                changed = True
    if not changed:
        return new
    return etree.tostring(new_root_, xml_declaration=True, encoding="UTF-8")


def merge_partial(old: bytes, new: bytes) -> bytes:
    """A `state="partial"` modify applied to the publication it modifies.

    RFC 4235 §4.1: a partial document lists only the dialogs that changed, so
    the dialogs of `old` that `new` does not name stay; the result is full
    state. A full `new` (the usual case) replaces `old` as it is."""
    roots = _both_roots(old, new) if b"partial" in new else None
    if roots is None:
        return new
    old_root, new_root_ = roots
    if new_root_.get("state") != "partial":
        return new
    named = {(d.get("id") or "").strip() for d in new_root_.iterchildren(_DIALOG)}
    kept = [d for d in old_root.iterchildren(_DIALOG) if (d.get("id") or "").strip() not in named]
    new_root_.set("state", "full")
    if kept:
        first = next(new_root_.iterchildren(_DIALOG), None)
        at = new_root_.index(first) if first is not None else len(new_root_)
        for i, dialog in enumerate(kept):
            new_root_.insert(at + i, dialog)
        reindent(new_root_)
    return etree.tostring(new_root_, xml_declaration=True, encoding="UTF-8")


def only_dialogs(body: bytes, call_id: str, tags: tuple[str, ...]) -> bytes:
    """The NOTIFY body for a subscription to particular dialogs (RFC 4235 §3.2:
    Event parameters `call-id`, `from-tag`, `to-tag`): the dialogs with that
    Call-ID whose local or remote tag is each given tag; the others are left
    out. A body that does not parse is returned as it is."""
    try:
        root = _parse_root(body)
    except BodyError:
        return body
    for dialog in list(root.iterchildren(_DIALOG)):
        own = ((dialog.get("local-tag") or "").strip(), (dialog.get("remote-tag") or "").strip())
        if (dialog.get("call-id") or "").strip() != call_id or any(t not in own for t in tags):
            root.remove(dialog)
    reindent(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


#: force_dummy_dialog's single dialog: an ended call, so every lamp is off.
_DUMMY_DIALOG = (
    '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="">'
    '<dialog id="presenced-idle" direction="recipient"><state>terminated</state></dialog>'
    "</dialog-info>"
).encode()


def dummy_dialoginfo(entity: str) -> VersionedBody:
    """force_dummy_dialog=1 with nothing published (Kamailio's dummy: one
    terminated dialog), for phones that ignore a document without dialogs."""
    return compose_dialoginfo(entity, [_DUMMY_DIALOG])


def compose_dialoginfo(
    entity: str, bodies: list[bytes], *, force_single_dialog: bool = False
) -> VersionedBody:
    """Full-state dialog-info for all publications, `bodies` highest priority first.

    Each dialog id appears once. The highest-priority copy wins unless a
    lower-priority copy is further along the RFC 4235 state machine: states
    never regress, so a stale "early" cannot hide a "confirmed" or
    "terminated" that was processed first.

    Terminated dialogs are kept (not dropped): a full-state document listing
    only terminated dialogs turns every BLF lamp off, including phones that
    ignore an empty document, and it is still valid RFC 4235. No publication
    gives a document with no dialogs (idle).

    force_single_dialog keeps one dialog for phones that cannot handle
    several, chosen by SINGLE_DIALOG_PREFERENCE, ties to the highest
    priority. Dialogs without an id and unparsable bodies are skipped;
    extension elements are kept after the dialogs.
    """
    roots = _roots(bodies)
    chosen: dict[str, tuple[int, etree._Element]] = {}
    others: list[etree._Element] = []
    for root in roots:
        for child in root:
            if child.tag != _DIALOG:
                others.append(child)
                continue
            ident = (child.get("id") or "").strip()
            if not ident:
                continue
            progress = _PROGRESS.get(_dialog_state(child), -1)
            current = chosen.get(ident)
            if current is None or progress > current[0]:
                chosen[ident] = (progress, child)
    dialogs = [dialog for _, dialog in chosen.values()]
    if force_single_dialog and len(dialogs) > 1:
        rank = {state: i for i, state in enumerate(SINGLE_DIALOG_PREFERENCE)}
        worst = len(rank)
        dialogs = [min(dialogs, key=lambda d: rank.get(_dialog_state(d), worst))]
    out = _new_document(entity, roots)
    append_children(out, dialogs + others)
    return VersionedBody.from_root(out)


def compose_dialoginfo_sla(entity: str, bodies: list[bytes]) -> VersionedBody:
    """dialog;sla: the newest usable publication only (no aggregation, spec §15.2).

    Unlike presence_xml the `version` is per subscriber (RFC 4235 §4.1); the
    rest of the publisher's document, including its entity, is passed through
    (entity is filled in only when missing). With no usable publication -
    or when the caller passes [] because the subscriber is the publisher -
    the result is an empty full-state document.
    """
    for body in bodies:
        if not body:
            continue
        try:
            root = _parse_root(body)
        except BodyError:
            continue
        if not (root.get("entity") or "").strip():
            root.set("entity", entity)
        if root.get("state") is None:
            root.set("state", "full")
        return VersionedBody.from_root(root)
    return VersionedBody.from_root(_new_document(entity, []))
