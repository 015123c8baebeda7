"""The warm-up exchange a server runs before listening (core/warmup.py)."""

from __future__ import annotations

from presenced.core import warmup
from presenced.sip.message import Request


def test_every_scripted_request_is_answered_2xx():
    # 3 rounds of OPTIONS + (PUBLISH, SUBSCRIBE, un-SUBSCRIBE, PUBLISH remove) x 2 packages
    assert warmup.warm_up(1000.0) == 27
    assert warmup.warm_up(5.0, rounds=1) == 9


def test_the_exchange_reaches_the_notify_path(monkeypatch):
    """The point is to run the common code once: NOTIFYs must go out (and be answered)."""
    seen: list = []
    real = warmup.parse_message

    def recording(data: bytes):
        msg = real(data)
        seen.append(msg)
        return msg

    monkeypatch.setattr(warmup, "parse_message", recording)
    assert warmup.warm_up(1000.0, rounds=1) == 9
    notifies = [m for m in seen if isinstance(m, Request) and m.method == "NOTIFY"]
    assert len(notifies) >= 4  # initial and terminating, for each package
    assert {m.get("event") for m in notifies} == {"presence", "message-summary"}
