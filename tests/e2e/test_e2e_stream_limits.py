"""Stream peers that misbehave cost bounded memory, and others keep being served."""

from __future__ import annotations

import socket
import time

from e2e_support import HOST, Phone, pidf, read_until, uid


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _big_options(port: int, i: int) -> bytes:
    # 120 Vias are copied into the answer: ~13 KB out per request
    vias = "".join(f"Via: SIP/2.0/TCP 10.0.{n // 250}.{n % 250}:5060;branch=z9hG4bK{i}x{n}\r\n" for n in range(120))
    return (f"OPTIONS sip:ping@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {HOST}:5999;branch=z9hG4bKnr{i}\r\n{vias}"
            f"Max-Forwards: 70\r\nFrom: <sip:nr@{HOST}>;tag=a{i}\r\nTo: <sip:ping@{HOST}>\r\n"
            f"Call-ID: nr-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_peer_that_never_reads_its_answers_is_throttled(spawn):
    """Without back-pressure the server read every request and queued every
    answer in its own memory (RSS +160 MB for 12,000 such requests)."""
    srv = spawn("--set", "presence_xml.force_active=1")
    rss0 = _rss_kb(srv.proc.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, srv.port))
    s.setblocking(False)
    sent, i, pending = 0, 0, b""
    end = time.monotonic() + 2
    while time.monotonic() < end:
        if not pending:
            pending = _big_options(srv.port, i)
            i += 1
        try:
            n = s.send(pending)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        pending = pending[n:]
    # the server stopped taking requests once a few hundred KB of answers queued
    assert sent < 32 << 20, f"{sent} bytes accepted from a peer that reads nothing"  # kernel buffers: ~10 MB
    assert _rss_kb(srv.proc.pid) - rss0 < 40_000
    with Phone(srv.port, "tcp", user=uid("w")) as other:
        assert other.request("OPTIONS", f"sip:ping@{HOST}:{srv.port}").status == 200
    # once it reads, it gets its answers
    s.setblocking(True)
    got = read_until(s, lambda b: b.count(b"SIP/2.0 200 OK") >= 5, timeout=5)
    assert got.count(b"SIP/2.0 200 OK") >= 5
    s.close()
    assert srv.alive()
