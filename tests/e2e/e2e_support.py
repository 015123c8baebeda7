"""Helpers for the end-to-end tests: a phone-like client and body builders.

`Phone` is the shared `SipClient` plus what a real UA does on its own:
it answers every NOTIFY the moment it arrives (with `notify_code`), answers
retransmitted NOTIFYs with the same response and does not report them twice.
That keeps NOTIFY counts exact even when a test is slow to look at them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

from sipclient import Dialog, ServerProcess, SipClient  # noqa: F401  (re-exported)

from presenced.sip import Request, Response

HOST = "127.0.0.1"


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def aor(name: str) -> str:
    return f"sip:{name}@{HOST}"


# ----------------------------------------------------------------- server
class Server(ServerProcess):
    """ServerProcess whose output goes to a file (a full pipe would block it)."""

    def start(self, timeout: float = 15.0) -> "Server":
        self.log = tempfile.NamedTemporaryFile(prefix="presenced-e2e-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + timeout
        with SipClient(self.port) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited:\n" + self.output())
                try:
                    r = c.request("OPTIONS", f"sip:ping@{HOST}:{self.port}", timeout=0.3)
                    if r.status == 200:
                        return self
                except TimeoutError:
                    pass
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output())

    def output(self) -> str:
        try:
            with open(self.log.name, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        rc = super().stop()
        try:
            self.log.close()
            os.unlink(self.log.name)
        except OSError:
            pass
        return rc


def cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "presenced", *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ client
class Phone(SipClient):
    def __init__(self, server_port: int, transport: str = "udp", user: str | None = None) -> None:
        super().__init__(server_port, transport, user=user or uid("w"))
        self.auto_answer = True

    def expect_notify(self, dialog: Dialog | None = None, timeout: float = 2.0, code: int | None = None) -> Request:
        assert code is None, "set phone.notify_code before the NOTIFY arrives"

        def match(m):
            if not isinstance(m, Request) or m.method != "NOTIFY":
                return False
            return dialog is None or m.call_id == dialog.call_id

        n = self.recv(timeout, match)
        assert isinstance(n, Request)
        return n

    def notifies(self, dialog: Dialog | None = None, window: float = 0.6) -> list[Request]:
        """Every NOTIFY (for `dialog`) arriving within `window` seconds."""
        out = []
        end = time.monotonic() + window
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.expect_notify(dialog, timeout=left))
            except TimeoutError:
                return out

    def no_notify(self, dialog: Dialog | None = None, window: float = 0.6) -> bool:
        return not self.notifies(dialog, window)

    def response_to(self, branch: str, timeout: float = 2.0) -> Response:
        return self.wait_response(branch, timeout)


# ------------------------------------------------------------------ bodies
def pidf(entity: str, tuple_id: str = "t1", basic: str = "open", note: str | None = None, ns: str = "urn:ietf:params:xml:ns:pidf") -> bytes:
    n = f"    <note>{note}</note>\n" if note is not None else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{ns}" entity="{entity}">\n'
        f'  <tuple id="{tuple_id}">\n'
        f"    <status><basic>{basic}</basic></status>\n"
        f"    <contact>{entity}</contact>\n"
        f"{n}"
        "  </tuple>\n"
        "</presence>\n"
    ).encode()


def dialog_info(entity: str, dialog_id: str = "d1", state: str = "confirmed", version: int = 0) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" state="full" entity="{entity}">\n'
        f'  <dialog id="{dialog_id}" call-id="c-{dialog_id}" local-tag="lt" remote-tag="rt" direction="initiator">\n'
        f"    <state>{state}</state>\n"
        "  </dialog>\n"
        "</dialog-info>\n"
    ).encode()


def tuple_ids(body: bytes) -> list[str]:
    return [t.decode() for t in re.findall(rb'<(?:[\w-]+:)?tuple\b[^>]*\bid="([^"]+)"', body or b"")]


def xml_attr(body: bytes, element: str, attr: str) -> str | None:
    m = re.search(rb"<(?:[\w-]+:)?" + element.encode() + rb"\b[^>]*\b" + attr.encode() + rb'="([^"]*)"', body)
    return m.group(1).decode() if m else None


def sub_state(notify: Request) -> str:
    return (notify.get("Subscription-State") or "").strip()


def expires_param(state: str) -> int | None:
    m = re.search(r"expires=(\d+)", state)
    return int(m.group(1)) if m else None


def cseq_num(msg) -> int:
    return msg.cseq.seq


def raw_tcp(port: int, timeout: float = 3.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until(sock: socket.socket, pred, timeout: float = 3.0) -> bytes:
    """Read from a stream socket until pred(buffer) is true, EOF, or timeout."""
    buf = b""
    end = time.monotonic() + timeout
    while not pred(buf):
        left = end - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65535)
        except socket.timeout:
            break
        except ConnectionError:
            break
        if not chunk:
            break
        buf += chunk
    return buf
