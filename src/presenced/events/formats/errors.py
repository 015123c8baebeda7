"""BodyError: the one exception for an unusable event body.

Kept out of the mypyc-compiled xml.py on purpose: pure-Python modules
subclass it (policy.model.RulesError), and mypyc forbids interpreted
subclasses of compiled classes.
"""

from __future__ import annotations

import re

_REASON_MAX = 120
_LXML_LOCATION = re.compile(r"\s*\(<string>, line \d+\)\s*$")
_NON_ASCII = re.compile(r"[^\x20-\x7e]")


def _one_line(reason: str) -> str:
    # The reason becomes a SIP reason phrase: one line, printable ASCII, short.
    reason = _LXML_LOCATION.sub("", str(reason))
    reason = " ".join(reason.split())
    reason = _NON_ASCII.sub("?", reason)
    if len(reason) > _REASON_MAX:
        reason = reason[: _REASON_MAX - 3].rstrip() + "..."
    return reason or "invalid body"


class BodyError(ValueError):
    """A body the server must refuse; `reason` is safe to use as a SIP reason phrase."""

    def __init__(self, reason: str) -> None:
        reason = _one_line(reason)
        super().__init__(reason)
        self.reason = reason
