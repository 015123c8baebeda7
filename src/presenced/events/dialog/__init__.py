"""`dialog` (RFC 4235) and `dialog;sla` (shared line appearances): BLF state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from presenced.events.base import EventPackage, PublicationView, VersionedBody
from presenced.events.formats import dialoginfo

DIALOG_INFO = "application/dialog-info+xml"

if TYPE_CHECKING:  # pragma: no cover
    from presenced.core.state import Subscription


class DialogPackage(EventPackage):
    name = "dialog"
    content_types = (DIALOG_INFO,)
    notify_type = DIALOG_INFO
    versioned = True
    keeps_history = True
    filter_params = frozenset({"call-id", "from-tag", "to-tag"})

    def validate(self, body: bytes, content_type: str) -> None:
        dialoginfo.validate_dialoginfo(body)

    def carry_over(self, old: bytes, new: bytes) -> bytes:
        # A partial document changes only the dialogs it names (RFC 4235
        # §4.1); terminated is final for a dialog id (§3.7.1), also when the
        # publisher's next document says otherwise.
        return dialoginfo.keep_terminated(old, dialoginfo.merge_partial(old, new))

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        return dialoginfo.compose_dialoginfo(
            entity, bodies, force_single_dialog=bool(self.options.get("force_single_dialog"))
        )

    def empty_body(self, entity: str) -> VersionedBody | None:
        # Nothing published: a full-state document without dialogs (idle), so
        # a lamp lit by a publication that expired or was removed goes off
        # (RFC 4235 §3.7: the NOTIFY carries the state; Kamailio sends no body).
        if self.options.get("force_dummy_dialog"):
            return dialoginfo.dummy_dialoginfo(entity)
        return dialoginfo.compose_dialoginfo(entity, [])

    def filter_for(self, body: bytes, subscription: "Subscription") -> bytes:
        # RFC 4235 §3.2: `Event: dialog;call-id=...;from-tag=...` watches
        # those dialogs only (the engine keeps the parameters in extra).
        extra = subscription.extra
        wanted = extra.get("filter") if extra is not None else None
        if not wanted or not body:
            return body
        call_id = wanted.get("call-id", "").strip('"')
        if not call_id:
            return body
        tags = tuple(wanted[t].strip('"') for t in ("from-tag", "to-tag") if wanted.get(t))
        return dialoginfo.only_dialogs(body, call_id, tags)


class DialogSlaPackage(DialogPackage):
    required_params = frozenset({"sla"})
    winfo = False

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        return dialoginfo.compose_dialoginfo_sla(entity, bodies)
