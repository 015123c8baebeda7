"""A small blocking SIP user agent for end-to-end tests over real sockets.

It speaks to a presenced process the way a phone would: builds requests,
waits for responses, answers NOTIFYs (200 by default, or a chosen code).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from presenced.sip import Request, Response, StreamFramer, build_response, parse_message


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class ServerProcess:
    """`presenced serve` as a child process on a free port."""

    def __init__(self, *extra: str, port: int | None = None, db_url: str = "memory") -> None:
        self.port = port or free_port()
        self.args = [
            sys.executable, "-m", "presenced", "serve",
            "--listen", f"udp:127.0.0.1:{self.port}", "--listen", f"tcp:127.0.0.1:{self.port}",
            "--db-url", db_url,
            # a stopping test server does not wait 2 s for answers from clients already gone
            "--set", "core.shutdown_grace_ms=200", *extra,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "ServerProcess":
        env = dict(os.environ)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + timeout
        with SipClient(self.port) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited: " + self.proc.stderr.read().decode(errors="replace"))
                try:
                    r = c.request("OPTIONS", f"sip:ping@127.0.0.1:{self.port}", timeout=0.3)
                    if r.status == 200:
                        return self
                except TimeoutError:
                    pass
        raise RuntimeError("server did not start")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str
    remote_uri: str
    event: str
    cseq: int = 1
    route: list[str] = field(default_factory=list)


class SipClient:
    def __init__(self, server_port: int, transport: str = "udp", host: str = "127.0.0.1", user: str = "watcher") -> None:
        self.server = (host, server_port)
        self.transport = transport
        self.user = user
        self.pending: list[Request | Response] = []
        self.notify_code = 200
        self.auto_answer = False
        self.answered: dict[str, bytes] = {}
        self.notify_retransmissions = 0
        self.via_host = "127.0.0.1"
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            self.sock = socket.create_connection(self.server, timeout=5)
            self.framer = StreamFramer()
        self.port = self.sock.getsockname()[1]
        self.received_raw: list[bytes] = []

    def __enter__(self) -> "SipClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def contact(self) -> str:
        t = f";transport={self.transport}" if self.transport != "udp" else ""
        return f"<sip:{self.user}@127.0.0.1:{self.port}{t}>"

    # ------------------------------------------------------------ raw I/O
    def send_raw(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def _read(self, timeout: float) -> list[bytes]:
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                data, _ = self.sock.recvfrom(65535)
                return [data]
            data = self.sock.recv(65535)
            if not data:
                raise ConnectionError("server closed the connection")
            return [m for m in self.framer.feed(data) if m != b"\r\n\r\n"]
        except socket.timeout:
            return []

    def recv(self, timeout: float = 2.0, want=None) -> Request | Response:
        """Next message matching `want(msg)` (others are kept for later)."""
        for i, m in enumerate(self.pending):
            if want is None or want(m):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching SIP message")
            for raw in self._read(left):
                self.received_raw.append(raw)
                msg = parse_message(raw, stream=self.transport != "udp")
                if self._keep(msg):
                    self.pending.append(msg)
            for i, m in enumerate(self.pending):
                if want is None or want(m):
                    return self.pending.pop(i)

    def _keep(self, msg: Request | Response) -> bool:
        """With `auto_answer`, answer each NOTIFY as it arrives (`notify_code`) and
        re-send that answer to its retransmissions, which are then dropped."""
        if not self.auto_answer or not isinstance(msg, Request) or msg.method != "NOTIFY":
            return True
        branch = msg.top_via.branch or ""
        if branch in self.answered:
            self.notify_retransmissions += 1
            self.send_raw(self.answered[branch])
            return False
        code = self.notify_code
        data = build_response(msg, code, "OK" if code == 200 else "Nope", to_tag=None)
        self.answered[branch] = data
        self.send_raw(data)
        return True

    def no_message(self, timeout: float = 0.5, want=None) -> bool:
        try:
            self.recv(timeout, want)
            return False
        except TimeoutError:
            return True

    # ----------------------------------------------------------- requests
    def build(
        self, method: str, uri: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
        *, call_id: str | None = None, from_tag: str | None = None, to_tag: str | None = None,
        cseq: int = 1, branch: str | None = None, from_uri: str | None = None, to_uri: str | None = None,
        content_length: bool = True,
    ) -> tuple[bytes, str]:
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        proto = self.transport.upper()
        from_uri = from_uri or f"sip:{self.user}@127.0.0.1"
        to_uri = to_uri or uri
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{proto} {self.via_host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag={from_tag or secrets.token_hex(4)}",
            f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id or secrets.token_hex(8)}@test",
            f"CSeq: {cseq} {method}",
        ]
        for n, v in headers or []:
            lines.append(f"{n}: {v}")
        if content_length:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch

    def request(self, method: str, uri: str, headers=None, body: bytes = b"", timeout: float = 2.0, **kw) -> Response:
        data, branch = self.build(method, uri, headers, body, **kw)
        self.send_raw(data)
        return self.wait_response(branch, timeout)

    def wait_response(self, branch: str, timeout: float = 2.0) -> Response:
        def match(m):
            return isinstance(m, Response) and m.status >= 200 and m.top_via.branch == branch

        return self.recv(timeout, match)  # type: ignore[return-value]

    # ------------------------------------------------------------ presence
    def publish(self, uri: str, body: bytes = b"", event: str = "presence", expires: int | None = 60,
                etag: str | None = None, ctype: str = "application/pidf+xml", extra=None, **kw) -> Response:
        h = [("Event", event)]
        if expires is not None:
            h.append(("Expires", str(expires)))
        if etag:
            h.append(("SIP-If-Match", etag))
        if body:
            h.append(("Content-Type", ctype))
        h.extend(extra or [])
        return self.request("PUBLISH", uri, h, body, **kw)

    def subscribe(self, uri: str, event: str = "presence", expires: int | None = 600, dialog: Dialog | None = None,
                  extra=None, timeout: float = 2.0) -> tuple[Response, Dialog]:
        h = [("Event", event), ("Contact", self.contact)]
        if expires is not None:
            h.append(("Expires", str(expires)))
        h.extend(extra or [])
        if dialog is None:
            dialog = Dialog(secrets.token_hex(8) + "@test", secrets.token_hex(4), None, f"sip:{self.user}@127.0.0.1", uri, event)
        else:
            dialog.cseq += 1
        resp = self.request(
            "SUBSCRIBE", uri, h, call_id=dialog.call_id.replace("@test", ""), from_tag=dialog.local_tag,
            to_tag=dialog.remote_tag, cseq=dialog.cseq, from_uri=dialog.local_uri, timeout=timeout,
        )
        if dialog.remote_tag is None and resp.status < 300:
            dialog.remote_tag = resp.to.tag
        return resp, dialog

    def expect_notify(self, dialog: Dialog | None = None, timeout: float = 2.0, code: int | None = None) -> Request:
        def match(m):
            if not isinstance(m, Request) or m.method != "NOTIFY":
                return False
            return dialog is None or m.call_id == dialog.call_id

        n = self.recv(timeout, match)
        assert isinstance(n, Request)
        self.answer(n, code if code is not None else self.notify_code)
        return n

    def answer(self, req: Request, code: int = 200, reason: str = "OK") -> None:
        from presenced.sip import build_response

        self.send_raw(build_response(req, code, reason, to_tag=None))
