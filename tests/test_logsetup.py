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


def test_a_driver_traceback_becomes_one_line():
    from presenced.logsetup import ConsoleFormatter, _DriverOneLiners

    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        import sys

        rec = logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1, "Failed to restore the pool %s",
                                ("floor",), sys.exc_info())
    _DriverOneLiners().filter(rec)
    line = ConsoleFormatter("%(levelname)s %(name)s: %(message)s").format(rec)
    assert "\n" not in line and "Traceback" not in line
    assert line == ("WARNING asyncpg.pool: Failed to restore the pool floor: "
                    "ConnectionResetError: [Errno 104] Connection reset by peer")


def test_our_own_tracebacks_are_kept():
    from presenced.logsetup import _DriverOneLiners

    try:
        raise ValueError("bug")
    except ValueError:
        import sys

        rec = logging.LogRecord("presenced.core", logging.ERROR, __file__, 1, "internal error", (), sys.exc_info())
    _DriverOneLiners().filter(rec)
    assert rec.exc_info is not None
