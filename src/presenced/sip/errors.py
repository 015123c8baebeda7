"""Errors raised by the SIP message layer.

A parse failure carries the reason a human operator should see: the server
turns it into the reason phrase of a 400 when the request can be answered.
"""


class SipError(Exception):
    """Base class for protocol errors."""


class SipParseError(SipError):
    """Malformed bytes; `status` is the response a UAS should send, if any."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class MessageTooLarge(SipParseError):
    def __init__(self, reason: str = "Message Too Large") -> None:
        super().__init__(reason, 513)
