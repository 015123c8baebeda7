"""`message-summary` (RFC 3842): voicemail lamps; the newest publication is shown.

Older publications stay (each keeps its ETag, RFC 3903 §4.1) and show again
when the newer ones are removed or expire, as in Kamailio."""

from __future__ import annotations

from typing import Sequence

from presenced.events.base import EventPackage, PublicationView, VersionedBody
from presenced.events.formats.summary import validate_message_summary

SUMMARY = "application/simple-message-summary"


class MessageSummaryPackage(EventPackage):
    name = "message-summary"
    content_types = (SUMMARY,)
    notify_type = SUMMARY

    def validate(self, body: bytes, content_type: str) -> None:
        validate_message_summary(body)

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        if not publications:
            return None
        body = publications[0].body
        if b"\n" in body.replace(b"\r\n", b""):
            # accepted with bare LF line ends; RFC 3842 §5's grammar has CRLF
            body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return VersionedBody.fixed(body)

    def empty_body(self, entity: str) -> VersionedBody | None:
        # Nothing published: the lamp is off (RFC 3842 §3.5 asks for state in
        # the first NOTIFY; an empty body left some phones' lamps as they were).
        return VersionedBody.fixed(b"Messages-Waiting: no\r\n")
