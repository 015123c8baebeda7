"""`reg` (RFC 3680): registration state, from PUBLISH or the built-in registrar."""

from __future__ import annotations

from typing import Sequence

from presenced.events.base import EventPackage, PublicationView, VersionedBody
from presenced.events.formats import reginfo
from presenced.events.formats.reginfo import reginfo_id

REGINFO = "application/reginfo+xml"


class RegPackage(EventPackage):
    name = "reg"
    content_types = (REGINFO,)
    notify_type = REGINFO
    default_expires = 3761  # RFC 3680 §4.4
    versioned = True

    def validate(self, body: bytes, content_type: str) -> None:
        reginfo.validate_reginfo(body)

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        return reginfo.compose_reginfo(entity, bodies)

    def empty_body(self, entity: str) -> VersionedBody | None:
        # RFC 3680 §4.7: the first NOTIFY carries full state; with nothing
        # known about the AoR that is one registration in state "init".
        return reginfo.render_reginfo(entity, reginfo_id(entity), "init", [])
