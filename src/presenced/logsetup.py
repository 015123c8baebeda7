"""Logging: console or JSON lines on stderr, each line carrying the Call-ID
of the SIP transaction being handled (set by the core per request)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("presenced_call_id", default=None)
#: Index of this worker process (`serve --workers N`); None in a single process.
WORKER: int | None = None


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = CALL_ID.get()
        record.worker = WORKER
        return True


class _DriverOneLiners(logging.Filter):
    """Database drivers' own reconnect warnings (asyncpg's pool logs a
    30-line traceback every retry during an outage) become one line each;
    presenced logs the outage itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(("asyncpg", "asyncmy", "aiosqlite")):
            err = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(err).__name__}: {err}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            out["call_id"] = call_id
        worker = getattr(record, "worker", None)
        if worker is not None:
            out["worker"] = worker
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        worker = getattr(record, "worker", None)
        if worker is not None:
            line = f"{line} [worker={worker}]"
        call_id = getattr(record, "call_id", None)
        return f"{line} [call-id={call_id}]" if call_id else line


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallIdFilter())
    handler.addFilter(_DriverOneLiners())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
