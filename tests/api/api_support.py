"""A real `Server` with the HTTP API, run in a background thread's event loop,
so the blocking SIP test client and plain HTTP calls can drive it from the
test thread."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

from sipclient import free_port

from presenced.config import load_config
from presenced.runtime.server import Server

HOST = "127.0.0.1"
TOKEN = "s3cret-" + secrets.token_hex(4)


def pidf(entity: str, basic: str = "open", note: str = "") -> bytes:
    n = f"<note>{note}</note>" if note else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">'
        f'<tuple id="t1"><status><basic>{basic}</basic></status>{n}</tuple></presence>'
    ).encode()


def uid(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


class LiveServer:
    def __init__(self, token: str = TOKEN, db_url: str = "memory", http: str = f"{HOST}:0",
                 loop: asyncio.AbstractEventLoop | None = None, **sets: Any) -> None:
        overrides: dict[str, Any] = {
            "db.url": db_url, "http.listen": http, "http.token": token,
            "presence_xml.force_active": 1, **sets,
        }
        self.cfg = load_config(None, overrides=overrides)
        self.token = token
        self.port = free_port()
        self.loop = loop or asyncio.new_event_loop()  # presenced serve runs uvloop; pass one to test what it does
        self.thread = threading.Thread(target=self.loop.run_forever, name="presenced-test-loop", daemon=True)
        self.server: Server | None = None

    # ---------------------------------------------------------------- life
    def start(self) -> "LiveServer":
        self.thread.start()

        async def build() -> Server:
            srv = Server(self.cfg, [f"udp:{HOST}:{self.port}", f"tcp:{HOST}:{self.port}"])
            await srv.start()
            return srv

        self.server = self.call(build())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace=0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def call(self, coro, timeout: float = 10.0) -> Any:
        """Run a coroutine in the server's loop; returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def in_loop(self, fn, *args) -> Any:
        """Run a plain function in the server's loop (to read or poke state safely)."""

        async def run():
            return fn(*args)

        return self.call(run())

    # ---------------------------------------------------------------- http
    @property
    def base(self) -> str:
        assert self.server is not None and self.server.http is not None
        return self.server.http.url

    def http(self, method: str, path: str, body: bytes | None = None, token: str | None = "default",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        tok = self.token if token == "default" else token
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def rpc_raw(self, payload: Any) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, _, data = self.http("POST", "/RPC", body, headers={"Content-Type": "application/json"})
        return status, (json.loads(data) if data else None)

    def rpc(self, method: str, *params: Any) -> Any:
        status, doc = self.rpc_raw({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 7})
        assert status == 200, (status, doc)
        assert doc["id"] == 7
        if "error" in doc:
            raise RpcFailed(doc["error"]["code"], doc["error"]["message"])
        return doc["result"]

    def raw_http(self, data: bytes) -> bytes:
        """Send raw bytes to the HTTP port; return everything the server answers."""
        assert self.server is not None and self.server.http is not None
        with socket.create_connection((HOST, self.server.http.port), timeout=5) as s:
            s.sendall(data)
            chunks = []
            while True:
                try:
                    c = s.recv(65536)
                except ConnectionResetError:
                    break
                if not c:
                    break
                chunks.append(c)
        return b"".join(chunks)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        status, headers, body = self.http("GET", "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(body.decode())


class RpcFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Strict-enough parser of the text format: every sample belongs to a
    family declared with HELP and TYPE before it; returns {(name, labels): value}."""
    typed: dict[str, str] = {}
    helped: set[str] = set()
    out: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in typed, f"duplicate TYPE for {name}"
            typed[name] = kind
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, _, labels, value = m.groups()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in typed and typed[name[: -len(suffix)]] == "histogram":
                family = name[: -len(suffix)]
        assert family in typed and family in helped, f"sample {name} without HELP/TYPE"
        lab = frozenset(_LABEL.findall(labels or ""))
        key = (name, lab)
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value)
    return out


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


class LiveWorkers(LiveServer):
    """The same API, served by `presenced serve --workers N` in a child process
    (the RPC must not tell one process from several)."""

    def __init__(self, workers: int = 2, token: str = TOKEN) -> None:
        self.workers = workers
        self.token = token
        self.port = free_port()
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.http_port = s.getsockname()[1]
        self.proc: Any = None

    def start(self) -> "LiveWorkers":
        import os
        import subprocess
        import sys
        import tempfile
        import time

        from sipclient import SipClient

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presenced", "serve", "--workers", str(self.workers), "--db-url", "memory",
             "--listen", f"udp:{HOST}:{self.port}", "--listen", f"tcp:{HOST}:{self.port}",
             "--http", f"{HOST}:{self.http_port}", "--set", f"http.token={self.token}",
             "--set", "presence_xml.force_active=1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + 15
        with SipClient(self.port) as c:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "server exited"
                try:
                    if c.request("OPTIONS", f"sip:ping@{HOST}:{self.port}", timeout=0.3).status == 200 \
                            and self.http("GET", "/health")[0] == 200:
                        return self
                except (TimeoutError, OSError):
                    pass
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.http_port}"
