"""`dialog` (RFC 4235) and `dialog;sla` (shared line appearances): BLF state."""

from __future__ import annotations

from typing import Sequence

from presenced.events.base import EventPackage, PublicationView, VersionedBody
from presenced.events.formats import dialoginfo

DIALOG_INFO = "application/dialog-info+xml"


class DialogPackage(EventPackage):
    name = "dialog"
    content_types = (DIALOG_INFO,)
    notify_type = DIALOG_INFO
    versioned = True
    keeps_history = True

    def validate(self, body: bytes, content_type: str) -> None:
        dialoginfo.validate_dialoginfo(body)

    def carry_over(self, old: bytes, new: bytes) -> bytes:
        # RFC 4235 §3.7.1: terminated is final for a dialog id, also when the
        # publisher's next document says otherwise.
        return dialoginfo.keep_terminated(old, new)

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        return dialoginfo.compose_dialoginfo(
            entity, bodies, force_single_dialog=bool(self.options.get("force_single_dialog"))
        )

    def empty_body(self, entity: str) -> VersionedBody | None:
        if self.options.get("force_dummy_dialog"):
            return dialoginfo.compose_dialoginfo(entity, [])
        return None


class DialogSlaPackage(DialogPackage):
    required_params = frozenset({"sla"})
    winfo = False

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        return dialoginfo.compose_dialoginfo_sla(entity, bodies)
