import json
import logging

from presenced.logsetup import CALL_ID, JsonFormatter, _CallIdFilter


def _record(msg: str) -> logging.LogRecord:
    rec = logging.LogRecord("presenced.test", logging.INFO, __file__, 1, msg, (), None)
    _CallIdFilter().filter(rec)
    return rec


def test_json_line_carries_the_call_id_of_the_current_request():
    token = CALL_ID.set("abc@host")
    try:
        out = json.loads(JsonFormatter().format(_record("hello")))
    finally:
        CALL_ID.reset(token)
    assert out["msg"] == "hello" and out["call_id"] == "abc@host" and out["level"] == "info"


def test_no_call_id_outside_a_request():
    out = json.loads(JsonFormatter().format(_record("idle")))
    assert "call_id" not in out
