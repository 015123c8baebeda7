"""Interop: two real baresip (1.0) instances talking presence through presenced.

alice subscribes to bob (contact with ``;presence=p2p``); bob registers and
PUBLISHes ``open`` on start, ``closed``/``open`` on ``/presence_offline`` and
``/presence_online``, and removes his publication (Expires: 0) on ``/quit``.
We read alice's contact list (``/contacts``) from her stdout.

baresip comes from the Debian package ``baresip-core``; ``.ci/run`` installs it.
Without it the test skips, except under CI (``PRESENCED_CI=1``), where a missing
baresip is a failure.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

_TESTS = pathlib.Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from sipclient import ServerProcess  # noqa: E402

BARESIP = shutil.which("baresip")
MODULE_DIRS = ("/usr/lib/baresip/modules", "/usr/lib/x86_64-linux-gnu/baresip/modules",
               "/usr/local/lib/baresip/modules")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A line of the `/contacts` listing, e.g. ">      Online Bob <sip:bob@127.0.0.1>"
PUBINT = 4  # bob's PUBLISH expiry; baresip refreshes at 90% of it
BOB_STATUS = re.compile(r"(Unknown|Online|Offline|Busy)\s+Bob <sip:bob@127\.0\.0\.1>")


def _require_baresip() -> str:
    if BARESIP:
        return BARESIP
    msg = "baresip not on PATH (install the Debian package baresip-core)"
    if os.environ.get("PRESENCED_CI") == "1":
        pytest.fail("PRESENCED_CI=1 but " + msg + "; .ci/run should have installed it", pytrace=False)
    pytest.skip(msg)


def _module_path() -> str:
    for d in MODULE_DIRS:
        if os.path.exists(os.path.join(d, "presence.so")):
            return d
    pytest.fail(f"baresip is installed but presence.so is in none of {MODULE_DIRS}", pytrace=False)


def _ports_free(port: int) -> bool:
    """baresip binds UDP+TCP on `port` and TLS (TCP) on `port + 1`; it has no way to turn TLS off."""
    socks = []
    try:
        for kind, p in ((socket.SOCK_DGRAM, port), (socket.SOCK_STREAM, port), (socket.SOCK_STREAM, port + 1),
                        (socket.SOCK_DGRAM, port + 1)):
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _baresip_port(taken: set[int]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and not ({port, port + 1} & taken) and _ports_free(port):
            taken.update((port, port + 1))
            return port
    raise RuntimeError("no free port pair for baresip")


class Baresip:
    """One baresip process in its own config directory, driven through stdin (stdio module)."""

    def __init__(self, name: str, workdir: pathlib.Path, sip_port: int, server_port: int, transport: str,
                 contacts: str = "", pubint: int = 600) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir()
        (self.dir / "config").write_text(
            "poll_method\t\tepoll\n"
            f"module_path\t\t{_module_path()}\n"
            f"sip_listen\t\t127.0.0.1:{sip_port}\n"
            "module\t\t\tstdio.so\n"
            "module_tmp\t\taccount.so\n"
            "module_app\t\tcontact.so\n"
            "module_app\t\tmenu.so\n"
            "module_app\t\tpresence.so\n"
        )
        uri_params = ";transport=tcp" if transport == "tcp" else ""
        (self.dir / "accounts").write_text(
            f'<sip:{name}@127.0.0.1{uri_params}>;auth_pass=x;'
            f'outbound="sip:127.0.0.1:{server_port};transport={transport}";regint=600;pubint={pubint}\n'
        )
        (self.dir / "contacts").write_text(contacts)
        self.proc: subprocess.Popen | None = None
        self._buf: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> "Baresip":
        # -s: SIP trace on stdout, so a failure message shows the exchange.
        self.proc = subprocess.Popen(
            [BARESIP, "-4", "-s", "-f", str(self.dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self._lock:
                self._buf.append(ANSI.sub("", raw.decode(errors="replace")).replace("\r", ""))

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._buf)

    def tail(self, n: int = 120) -> str:
        with self._lock:
            return "".join(self._buf[-n:])

    def command(self, cmd: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_output(self, pattern: str, deadline: float, since: int = 0) -> int:
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.output, since)
            if m:
                return m.end()
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {pattern!r} in time:\n{self.tail()}")

    def quit(self, timeout: float = 5.0) -> None:
        """`/quit` (un-PUBLISH, un-SUBSCRIBE, un-REGISTER), bounded."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.command("/quit")
            self.proc.wait(timeout)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            pass

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(2)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        if self._reader is not None:
            self._reader.join(2)


def _refresh_answered(bob: Baresip) -> bool:
    """Has bob sent a PUBLISH refresh (SIP-If-Match, no body, Expires > 0) that got a 200?

    Relies on baresip's `-s` trace: messages are blocks after a "#" line.
    """
    blocks = [b.strip("\n") for b in re.split(r"^#\n", bob.output, flags=re.M)]
    refresh_cseqs = set()
    for blk in blocks:
        lines = blk.split("\n")
        if len(lines) < 2 or not lines[1].startswith("PUBLISH "):
            continue
        if ("\nSIP-If-Match:" in blk and "\nContent-Length: 0" in blk
                and not re.search(r"^Expires: 0$", blk, re.M)):
            m = re.search(r"^CSeq: (\d+) PUBLISH$", blk, re.M)
            if m:
                refresh_cseqs.add(m.group(1))
    for blk in blocks:
        lines = blk.split("\n")
        if len(lines) >= 2 and lines[1].startswith("SIP/2.0 200"):
            m = re.search(r"^CSeq: (\d+) PUBLISH$", blk, re.M)
            if m and m.group(1) in refresh_cseqs:
                return True
    return False


def _bob_status(alice: Baresip) -> str | None:
    found = BOB_STATUS.findall(alice.output)
    return found[-1] if found else None


def _wait_bob_status(alice: Baresip, bob: Baresip, want: set[str], deadline: float, what: str) -> str:
    """Poll alice's `/contacts` until bob's status is in `want`."""
    while time.monotonic() < deadline:
        mark = len(alice.output)
        alice.command("/contacts")
        t_end = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < t_end:
            listed = BOB_STATUS.findall(alice.output[mark:])
            if listed:
                if listed[-1] in want:
                    return listed[-1]
                break
            time.sleep(0.05)
        time.sleep(0.2)
    raise AssertionError(
        f"alice never saw bob {what} (wanted {sorted(want)}, last seen {_bob_status(alice)!r})\n"
        f"---- alice ----\n{alice.tail(200)}\n---- bob ----\n{bob.tail(80)}"
    )


def _stop_all(server: ServerProcess, *clients: Baresip | None) -> None:
    for b in clients:
        if b is not None:
            b.quit(timeout=3)
            b.kill()
    if server.proc is not None:
        server.stop()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_alice_sees_bob_online_and_offline(transport: str, tmp_path: pathlib.Path) -> None:
    _require_baresip()
    start = time.monotonic()
    deadline = start + 30.0  # whole scenario; each step also has its own bound below
    server = ServerProcess("--set", "presence_xml.force_active=1")
    taken: set[int] = set()
    alice = bob = None
    try:
        server.start()
        taken.update((server.port, server.port + 1))
        alice = Baresip("alice", tmp_path, _baresip_port(taken), server.port, transport,
                        contacts='"Bob" <sip:bob@127.0.0.1>;presence=p2p\n')
        # pubint=4: bob refreshes his publication (empty body + SIP-If-Match) every ~3.6 s.
        bob = Baresip("bob", tmp_path, _baresip_port(taken), server.port, transport, pubint=PUBINT)

        # alice registers and subscribes to bob before bob exists: first NOTIFY is bodyless.
        alice.start()
        alice.wait_output(r"All 1 useragent registered successfully", min(deadline, time.monotonic() + 5))
        alice.wait_output(r"Subscription-State: active", min(deadline, time.monotonic() + 6))

        # bob starts: REGISTER then PUBLISH open -> alice gets a NOTIFY with bob open.
        bob.start()
        bob.wait_output(r"All 1 useragent registered successfully", min(deadline, time.monotonic() + 5))
        _wait_bob_status(alice, bob, {"Online"}, min(deadline, time.monotonic() + 5), "go online (initial PUBLISH)")

        # bob refreshes (PUBLISH, SIP-If-Match, Content-Type but no body): must get a 200,
        # keep him Online, and the new ETag must be accepted by the next modify below.
        t_end = min(deadline, time.monotonic() + PUBINT + 3)
        while not _refresh_answered(bob):
            if time.monotonic() > t_end:
                raise AssertionError(f"bob's PUBLISH refresh was not answered 200:\n{bob.tail(80)}")
            time.sleep(0.1)
        _wait_bob_status(alice, bob, {"Online"}, min(deadline, time.monotonic() + 2), "stay online after a refresh")

        # bob sets himself offline: PUBLISH (SIP-If-Match) with <basic>closed</basic>.
        bob.command("/presence_offline")
        _wait_bob_status(alice, bob, {"Offline"}, min(deadline, time.monotonic() + 5), "go offline (/presence_offline)")

        # ...and online again.
        bob.command("/presence_online")
        _wait_bob_status(alice, bob, {"Online"}, min(deadline, time.monotonic() + 5), "go online (/presence_online)")

        # bob quits: PUBLISH Expires: 0 removes his state; the NOTIFY then carries no
        # publication (Kamailio sends it bodyless, which baresip shows as "Unknown").
        bob.quit()
        _wait_bob_status(alice, bob, {"Offline", "Unknown"}, min(deadline, time.monotonic() + 5),
                         "leave Online after quitting (un-PUBLISH)")
    finally:
        _stop_all(server, bob, alice)
    assert time.monotonic() - start < 40


@pytest.mark.timeout(30)
def test_baresip_answers_the_default_digest_challenge(tmp_path: pathlib.Path) -> None:
    """With PUBLISH and SUBSCRIBE behind digest authentication, baresip (libre)
    authenticates and alice sees bob. libre answers no 401 that offers an
    algorithm it lacks, so this fails when a SHA-256 challenge is offered."""
    _require_baresip()
    db = f"sqlite://{tmp_path}/auth.db"
    for user in ("alice", "bob"):
        r = subprocess.run([sys.executable, "-m", "presenced", "user", "add", f"{user}@127.0.0.1", "x",
                            "--db-url", db], capture_output=True, text=True, timeout=15)
        assert r.returncode == 0, r.stderr
    server = ServerProcess("--set", "presence_xml.force_active=1", "--set", "auth.require=PUBLISH,SUBSCRIBE",
                           db_url=db)
    taken: set[int] = set()
    alice = bob = None
    deadline = time.monotonic() + 20.0
    try:
        server.start()
        taken.update((server.port, server.port + 1))
        alice = Baresip("alice", tmp_path, _baresip_port(taken), server.port, "udp",
                        contacts='"Bob" <sip:bob@127.0.0.1>;presence=p2p\n')
        bob = Baresip("bob", tmp_path, _baresip_port(taken), server.port, "udp")
        alice.start()
        alice.wait_output(r"Subscription-State: active", min(deadline, time.monotonic() + 8))
        bob.start()
        _wait_bob_status(alice, bob, {"Online"}, min(deadline, time.monotonic() + 8), "go online behind digest auth")
        assert "Authorization: Digest" in bob.output  # bob's PUBLISH was challenged and answered
    finally:
        _stop_all(server, bob, alice)
