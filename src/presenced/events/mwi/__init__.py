"""`message-summary` (RFC 3842): voicemail lamps; the newest publication wins."""

from __future__ import annotations

from presenced.events.base import EventPackage
from presenced.events.formats.summary import validate_message_summary

SUMMARY = "application/simple-message-summary"


class MessageSummaryPackage(EventPackage):
    name = "message-summary"
    content_types = (SUMMARY,)
    notify_type = SUMMARY
    composes = False

    def validate(self, body: bytes, content_type: str) -> None:
        validate_message_summary(body)
