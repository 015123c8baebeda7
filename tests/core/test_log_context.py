"""Log lines name the request they belong to, and only that one."""

from __future__ import annotations

import logging

from presenced.api.presence import install_route
from presenced.logsetup import CALL_ID, ConsoleFormatter, _CallIdFilter

from core_support import Harness, pidf


def _line(msg: str) -> str:
    rec = logging.LogRecord("presenced.runtime", logging.INFO, __file__, 1, msg, (), None)
    _CallIdFilter().filter(rec)
    return ConsoleFormatter("%(message)s").format(rec)


def test_a_log_line_after_a_request_carries_no_stale_call_id():
    h = Harness.make()
    resp = h.publish("sip:alice@example.com", pidf("sip:alice@example.com"))
    assert resp.status == 200
    # what the runtime logs next (a timer, storage, shutdown) is no longer
    # about that PUBLISH
    assert CALL_ID.get() is None
    assert _line("shutting down") == "shutting down"


def test_a_log_line_during_a_request_names_its_call_id():
    seen = []
    h = Harness.make()
    install_route(h.core, lambda rc: seen.append(_line("handling")))
    h.publish("sip:alice@example.com", pidf("sip:alice@example.com"))
    assert len(seen) == 1 and seen[0].startswith("handling [call-id=") and "None" not in seen[0]
    assert CALL_ID.get() is None
