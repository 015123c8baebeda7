"""`presence` (RFC 3856/3863): PIDF documents, composed from every live publication."""

from __future__ import annotations

from typing import Sequence

from presenced.events.base import EventPackage, PublicationView, VersionedBody
from presenced.events.formats import pidf
from presenced.events.formats.xml import BodyError

PIDF = "application/pidf+xml"


class PresencePackage(EventPackage):
    name = "presence"
    # cpim-pidf is PIDF under its older name; XPIDF is another format (415)
    content_types = (PIDF, "application/cpim-pidf+xml")
    notify_type = PIDF
    winfo = True
    requires_auth = True
    versioned = False

    def validate(self, body: bytes, content_type: str) -> None:
        pidf.validate_pidf(body)  # cpim-pidf included: the same document

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        bodies = [p.body for p in publications if p.body]
        if not bodies:
            return None
        if self.options.get("force_presence_single_body"):
            bodies = bodies[:1]
        try:
            return VersionedBody.fixed(pidf.compose_pidf(entity, bodies))
        except BodyError:
            return VersionedBody.fixed(bodies[0])

    def empty_body(self, entity: str) -> VersionedBody | None:
        if self.options.get("force_dummy_presence"):
            return VersionedBody.fixed(pidf.dummy_pidf(entity))
        return None

    def blocked_body(self, entity: str) -> bytes:
        # RFC 5025 §3.2.1 polite-block: the presentity looks unavailable, a
        # single closed service and nothing else (Kamailio sends no body).
        return pidf.dummy_pidf(entity)
