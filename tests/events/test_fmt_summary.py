"""message-summary validation (RFC 3842 §5)."""

from __future__ import annotations

import pytest

from presenced.events.formats.summary import validate_message_summary
from presenced.events.formats.xml import BodyError

GOOD = [
    b"Messages-Waiting: yes\r\n",
    b"Messages-Waiting:yes\r\n",
    b"messages-waiting: YES\r\n",
    b"Messages-Waiting : no\r\n",
    b"Messages-Waiting:\tno",
    b"Messages-Waiting: yes\n",
    b"Messages-Waiting: yes\nVoice-Message: 2/8 (0/2)\n",
    (
        b"Messages-Waiting: yes\r\n"
        b"Message-Account: sip:alice@vmail.example.com\r\n"
        b"Voice-Message: 4/8 (1/2)\r\n"
        b"Fax-Message: 0/0\r\n"
        b"voice-message:1 / 2 ( 0 / 1 )\r\n"
        b"X-Vendor: whatever\r\n"
        b"\r\n"
        b"Message-Id: 1234@example.com\r\n"
        b"Subject: Call me\r\n"
        b"\r\n"
        b"Message-Id: 5678@example.com\r\n"
        b"To: <sip:alice@example.com>\r\n"
        b"\r\n"
    ),
    # folded header line
    b"Messages-Waiting: yes\r\nSubject-Thing: part one\r\n  part two\r\n",
    b"Messages-Waiting: no\r\nNone: 0/0\r\nMultimedia-Message: 4294967295/0\r\n",
]


@pytest.mark.parametrize("body", GOOD)
def test_accepts(body):
    validate_message_summary(body)


BAD = [
    (b"", "empty"),
    (b"\r\n\r\n", "empty"),
    (b"garbage", "first line"),
    (b"Voice-Message: 2/8\r\nMessages-Waiting: yes\r\n", "first line"),
    (b"Messages-Waiting yes\r\n", "first line"),
    (b"Messages-Waiting: maybe\r\n", "yes or no"),
    (b"Messages-Waiting: yes please\r\n", "yes or no"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 2/x\r\n", "bad Voice-Message counts"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 2\r\n", "bad Voice-Message counts"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (1)\r\n", "counts"),
    (b"Messages-Waiting: yes\r\nVoice-Message: -1/0\r\n", "counts"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 4294967296/0\r\n", "exceeds"),
    (b"Messages-Waiting: yes\r\nthis is not a header\r\n", "not a header"),
    (b"Messages-Waiting: yes\r\n\r\nnot a header either\r\n", "not a header"),
    (b"Messages-Waiting: yes\r\nMessages-Waiting: no\r\n", "duplicate"),
    (b"Messages-Waiting: yes\r\nMessage-Account: not a uri\r\n", "URI"),
    (b"Messages-Waiting: yes\r\nMessage-Account: sip:a@b\r\nMessage-Account: sip:c@d\r\n", "duplicate"),
    (b"Messages-Waiting: yes\r\nX: a\x01b\r\n", "control"),
    (b"Messages-Waiting: yes\rVoice-Message: 1/0\r\n", "control"),
    (b"  continued\r\nMessages-Waiting: yes\r\n", "continuation"),
    (b"Messages-Waiting: yes\r\n\xff\xfe\r\n", "UTF-8"),
]


@pytest.mark.parametrize("body,needle", BAD)
def test_rejects_with_reason(body, needle):
    with pytest.raises(BodyError) as info:
        validate_message_summary(body)
    reason = info.value.reason
    assert needle in reason
    assert reason.isascii() and "\n" not in reason


def test_oversized_rejected():
    body = b"Messages-Waiting: yes\r\n" + b"X: " + b"a" * 300000 + b"\r\n"
    with pytest.raises(BodyError, match="too large"):
        validate_message_summary(body)
