"""message-summary bodies (RFC 3842 §5), `application/simple-message-summary`.

Follows the RFC grammar rather than presence_mwi's stricter check: HCOLON
allows no space after the colon, literals are case-insensitive, and bare LF
line ends are accepted because voicemail systems on Unix hosts send them.
"""

from __future__ import annotations

import re

from .xml import MAX_BODY_SIZE, BodyError

__all__ = ["MESSAGE_CONTEXT_CLASSES", "validate_message_summary"]

#: RFC 3458 message-context classes (compared case-insensitively).
MESSAGE_CONTEXT_CLASSES = frozenset(
    {"voice-message", "fax-message", "pager-message", "multimedia-message", "text-message", "none"}
)

_MAX_COUNT = 2**32 - 1
# header-name = token (RFC 3261 §25.1); HCOLON = *( SP / HTAB ) ":" SWS
_HEADER = re.compile(r"([A-Za-z0-9.!%*_+`'~-]+)[ \t]*:[ \t]*(.*)\Z")
_COUNTS = re.compile(
    r"([0-9]{1,20})[ \t]*/[ \t]*([0-9]{1,20})"
    r"(?:[ \t]*\([ \t]*([0-9]{1,20})[ \t]*/[ \t]*([0-9]{1,20})[ \t]*\))?[ \t]*\Z"
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Split on CRLF or LF and unfold continuation lines (LWS), keeping the
    physical line number of each logical line for error messages."""
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(raw, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if _CONTROL.search(line):
            raise BodyError(f"control character on line {number}")
        if line[:1] in (" ", "\t") and line.strip():
            if not lines or not lines[-1][1]:
                raise BodyError(f"continuation line {number} without a header")
            prev_number, prev = lines[-1]
            lines[-1] = (prev_number, prev + " " + line.strip())
            continue
        lines.append((number, line if line.strip() else ""))
    return lines


# The shape voicemail servers send (Messages-Waiting, an optional ASCII
# Message-Account, message-context counts below 2^30, every line ended):
# accepted by one match. Anything else gets the line-by-line validation below.
_TYPICAL = re.compile(
    rb"Messages-Waiting[ \t]*:[ \t]*(?:yes|no)[ \t]*\r?\n"
    rb"(?:Message-Account[ \t]*:[ \t]*[A-Za-z][A-Za-z0-9+.-]*:[!-~]+[ \t]*\r?\n)?"
    rb"(?:(?:voice-message|fax-message|pager-message|multimedia-message|text-message|none)[ \t]*:[ \t]*"
    rb"[0-9]{1,9}[ \t]*/[ \t]*[0-9]{1,9}"
    rb"(?:[ \t]*\([ \t]*[0-9]{1,9}[ \t]*/[ \t]*[0-9]{1,9}[ \t]*\))?[ \t]*\r?\n)*\Z",
    re.IGNORECASE,
)


def validate_message_summary(body: bytes) -> None:
    """Accept a message-summary body or raise BodyError saying what is wrong.

    Accepted: `Messages-Waiting` HCOLON yes|no first; then in any order an
    optional single `Message-Account` (a URI), message-context lines such as
    `Voice-Message: 2/8 (0/2)` (counts up to 2^32-1) and extension headers;
    then optional blank-line separated blocks of message headers. Trailing
    blank lines and a missing final line end are tolerated.
    """
    if len(body) > MAX_BODY_SIZE:
        raise BodyError(f"body too large ({len(body)} bytes, max {MAX_BODY_SIZE})")
    if _TYPICAL.match(body) is not None:
        return
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("message-summary is not valid UTF-8") from None
    if not text.strip():
        raise BodyError("empty message-summary")
    lines = _logical_lines(text)

    number, first = lines[0]
    match = _HEADER.match(first)
    if not match or match.group(1).lower() != "messages-waiting":
        raise BodyError("first line must be Messages-Waiting: yes|no")
    if match.group(2).strip().lower() not in ("yes", "no"):
        raise BodyError("Messages-Waiting must be yes or no")

    in_summary = True
    seen_account = False
    for number, line in lines[1:]:
        if not line:
            in_summary = False
            continue
        match = _HEADER.match(line)
        if not match:
            raise BodyError(f"line {number} is not a header (name: value)")
        if not in_summary:
            continue  # message-header blocks: any extension header is fine
        name = match.group(1)
        lname = name.lower()
        value = match.group(2).strip()
        if lname == "messages-waiting":
            raise BodyError(f"duplicate Messages-Waiting on line {number}")
        if lname == "message-account":
            if seen_account:
                raise BodyError(f"duplicate Message-Account on line {number}")
            seen_account = True
            if not _URI.match(value):
                raise BodyError("Message-Account must be a URI")
        elif lname in MESSAGE_CONTEXT_CLASSES:
            counts = _COUNTS.match(value)
            if not counts:
                raise BodyError(f"bad {name} counts, expected new/old (urgent-new/urgent-old)")
            if any(int(c) > _MAX_COUNT for c in counts.groups() if c is not None):
                raise BodyError(f"{name} count exceeds 2^32-1")
