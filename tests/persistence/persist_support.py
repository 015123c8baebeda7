"""Helpers for the persistence tests: a killable server process, a phone-like
UA that answers NOTIFYs by itself, private tables on a real database, bodies.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time

from sipclient import Dialog, SipClient, free_port  # noqa: F401  (re-exported)
from storage_support import backend_url, open_store, suffix_tables

from presenced.sip import Request
from presenced.storage import Store, schema

HOST = "127.0.0.1"


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def aor(name: str) -> str:
    return f"sip:{name}@{HOST}"


# --------------------------------------------------------------- database
class Database:
    """Private table names on one backend, plus synchronous raw SQL for checks."""

    def __init__(self, backend: str, url: str, tables: dict[str, str]) -> None:
        self.backend = backend
        self.url = url
        self.tables = tables
        self.names = schema.table_names(tables)

    @classmethod
    def open(cls, backend: str, tmp_path, *, tables: dict[str, str] | None = None) -> "Database":
        db = cls(backend, backend_url(backend, tmp_path), tables if tables is not None else suffix_tables())
        db.run(lambda store: store.ping())  # skips (or fails with PRESENCED_REQUIRE_DB=1) when unreachable
        return db

    def set_args(self) -> list[str]:
        t = self.tables
        out: list[str] = []
        for key, param in (
            ("presentity", "presence.presentity_table"),
            ("active_watchers", "presence.active_watchers_table"),
            ("watchers", "presence.watchers_table"),
            ("xcap", "presence_xml.xcap_table"),
        ):
            if key in t:
                out += ["--set", f"{param}={t[key]}"]
        return out

    def run(self, fn):
        """Run `await fn(store)` on a fresh connection (from synchronous test code)."""

        async def go():
            store = await open_store(self.url, self.backend, tables=self.tables)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def fetch(self, sql: str, params=()) -> list[tuple]:
        """Plain SQL with `?` placeholders; {presentity}, {active_watchers}, ... are table names."""

        async def q(store: Store):
            text = schema._ph(store.dialect, sql.format(**store.names))
            return [tuple(r) for r in await store._fetch(text, params)]

        return self.run(q)

    def count(self, key: str, where: str = "", params=()) -> int:
        return int(self.fetch(f"SELECT COUNT(*) FROM {{{key}}}" + (f" WHERE {where}" if where else ""), params)[0][0])

    def cleanup(self) -> None:
        if self.backend in ("postgresql", "mysql"):
            try:
                self.run(lambda store: store.drop_tables())
            except Exception:  # noqa: BLE001 - best effort
                pass


# ----------------------------------------------------------------- server
class Server:
    """`presenced serve` as a child process; output goes to a file (a full pipe would block it)."""

    def __init__(self, *extra: str, db: Database | None = None, port: int | None = None, url: str | None = None) -> None:
        self.port = port or free_port()
        self.db = db
        url = url or (db.url if db is not None else "memory")
        self.args = [
            sys.executable, "-m", "presenced", "serve",
            "--listen", f"udp:{HOST}:{self.port}", "--listen", f"tcp:{HOST}:{self.port}",
            "--db-url", url, *(db.set_args() if db is not None else []),
            "--set", "core.shutdown_grace_ms=200", *extra,  # clients already gone: no 2 s wait at each stop
        ]
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="presenced-persist-", suffix=".log", delete=False)

    def start(self, timeout: float = 15.0) -> "Server":
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + timeout
        with SipClient(self.port) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + self.output())
                try:
                    if c.request("OPTIONS", f"sip:ping@{HOST}:{self.port}", timeout=0.3).status == 200:
                        return self
                except TimeoutError:
                    pass
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output())

    def again(self) -> "Server":
        """A new (not started) process with the same arguments: same port, database and tables."""
        srv = Server(port=self.port, db=self.db)
        srv.args = list(self.args)
        return srv

    def output(self) -> str:
        try:
            with open(self.log.name, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def sigterm(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self.log.close()
            os.unlink(self.log.name)
        except OSError:
            pass
        return self.proc.returncode if self.proc is not None else None


# ------------------------------------------------------------------- UA
class UA(SipClient):
    """SipClient that answers every NOTIFY (200) the moment it arrives and absorbs retransmissions."""

    def __init__(self, server_port: int, user: str | None = None) -> None:
        super().__init__(server_port, "udp", user=user or uid("ua"))
        self.auto_answer = True

    def expect_notify(self, dialog: Dialog | None = None, timeout: float = 3.0, code: int | None = None) -> Request:
        def match(m):
            return isinstance(m, Request) and m.method == "NOTIFY" and (dialog is None or m.call_id == dialog.call_id)

        return self.recv(timeout, match)  # type: ignore[return-value]

    def notifies(self, dialog: Dialog | None = None, window: float = 0.5) -> list[Request]:
        out: list[Request] = []
        end = time.monotonic() + window
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.expect_notify(dialog, timeout=left))
            except TimeoutError:
                break
        return out


# ---------------------------------------------------------------- bodies
def pidf(entity: str, note: str, basic: str = "open", tuple_id: str = "t1") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">\n'
        f'  <tuple id="{tuple_id}"><status><basic>{basic}</basic></status><note>{note}</note></tuple>\n'
        "</presence>\n"
    ).encode()


def dialog_info(entity: str, state: str = "confirmed", dialog_id: str = "d1") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="{entity}">\n'
        f'  <dialog id="{dialog_id}" call-id="c-{dialog_id}" local-tag="lt" remote-tag="rt" direction="initiator">'
        f"<state>{state}</state></dialog>\n"
        "</dialog-info>\n"
    ).encode()


def body_version(body: bytes) -> int:
    m = re.search(rb"<(?:[\w-]+:)?dialog-info\b[^>]*\bversion=\"(\d+)\"", body or b"")
    assert m, f"no dialog-info version in {body!r}"
    return int(m.group(1))


def sub_state(notify: Request) -> str:
    return (notify.get("Subscription-State") or "").strip()


# ------------------------------------------------------------- TCP proxy
class TcpProxy:
    """127.0.0.1:<port> → target, to simulate a database outage.

    cut(): close every proxied connection and refuse new ones (server down,
    connections reset); stall(): keep connections open but forward nothing
    (network partition: packets vanish); restore(): back to normal.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target = target
        self.port = free_port()
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._socks: list = []
        self._listener = None
        self._threading = threading
        self.restore()

    def _listen(self):
        import socket

        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, self.port))
        ls.listen(16)
        ls.settimeout(0.1)
        return ls

    def restore(self) -> None:
        self.stalled.clear()
        if self._listener is None:
            self._listener = self._listen()
            self._threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def cut(self) -> None:
        import socket

        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    close = cut

    def _accept(self, ls) -> None:
        import socket

        while self._listener is ls:
            try:
                client, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        import select

        try:
            while True:
                if self.stalled.is_set():
                    time.sleep(0.05)
                    continue
                r, _, _ = select.select([src], [], [], 0.05)
                if not r:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while self.stalled.is_set():  # a partition loses nothing, it delays
                    time.sleep(0.05)
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
