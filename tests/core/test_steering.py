"""Kernel steering of UDP datagrams between workers (core/partition.py's classic
BPF program): run by a small BPF interpreter here, and by the kernel on real
SO_REUSEPORT sockets; it must pick the owner `Partitioner.classify` picks, or
leave the datagram to the kernel's hash."""

from __future__ import annotations

import os

import socket
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presenced.core.engine import PresenceEngine
from presenced.core.partition import (
    BPF_MAXINSNS, STEER_NONE, Partitioner, partition_hash, steering_program,
)
from presenced.events import default_registry
from presenced.transaction.layer import TransactionLayer
from presenced.transaction.timers import TimerHeap


# The pure-Python rerun (tests/test_build_mode.py) checks the .py sources
# pass; the compiled run already explored the inputs at full size.
_PURE = bool(os.environ.get("PRESENCED_PURE_PYTHON"))


def _examples(n: int) -> int:
    return max(10, n // 5) if _PURE else n

KEY = PresenceEngine(default_registry(None), TransactionLayer(TimerHeap()), TimerHeap()).presentity_key


class Abort(Exception):
    """A load past the end of the packet: the kernel ends the program with 0."""


def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """A classic BPF interpreter for the instructions the steering program uses."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int) -> int:
        if off < 0 or off + size > len(pkt):
            raise Abort
        return int.from_bytes(pkt[off:off + size], "big")

    try:
        while True:
            code, jt, jf, k = prog[pc]
            pc += 1
            cls = code & 0x07
            if cls == 0x00:  # LD
                mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
                a = {0x00: lambda: k, 0x20: lambda: load(k, size), 0x40: lambda: load(x + k, size),
                     0x60: lambda: mem[k]}[mode]()
            elif cls == 0x01:  # LDX (M[] only)
                assert code & 0xE0 == 0x60
                x = mem[k]
            elif cls == 0x02:
                mem[k] = a
            elif cls == 0x04:  # ALU
                v = x if code & 0x08 else k
                a = {0x00: lambda: a + v, 0x10: lambda: a - v, 0x20: lambda: a * v, 0x40: lambda: a | v,
                     0x50: lambda: a & v, 0x70: lambda: a >> v, 0x90: lambda: a % v,
                     0xA0: lambda: a ^ v}[code & 0xF0]() & 0xFFFFFFFF
            elif cls == 0x05:  # JMP
                op = code & 0xF0
                if op == 0x00:
                    pc += k
                    continue
                v = x if code & 0x08 else k
                taken = {0x10: a == v, 0x20: a > v, 0x30: a >= v, 0x40: bool(a & v)}[op]
                pc += jt if taken else jf
            elif cls == 0x06:
                return a if code & 0x10 else k
            elif cls == 0x07:
                x = a if code & 0xF8 == 0x00 else x
                a = x if code & 0xF8 == 0x80 else a
    except Abort:
        return 0


def request(method: str, ruri: str, to_tag: str | None = None, via_branch: str = "z9hG4bKcli") -> bytes:
    to = f"<{ruri}>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={via_branch}\r\n"
            f"From: <sip:w@x>;tag=1\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def response(branch: str, host: str = "127.0.0.1:5060", reason: str = "OK") -> bytes:
    return (f"SIP/2.0 200 {reason}\r\nVia: SIP/2.0/UDP {host};branch={branch}\r\n"
            "From: <sip:p@x>;tag=h0001.ab\r\nTo: <sip:w@x>;tag=9\r\nCall-ID: c\r\nCSeq: 2 NOTIFY\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def steer(workers: int, pkt: bytes) -> int | None:
    """The socket the kernel would pick, or None for "its own hash"."""
    i = run_bpf(steering_program(workers), pkt)
    return None if i >= workers else i


def test_program_fits_the_kernel_limit_and_jumps_stay_inside():
    for n in range(2, 11):
        prog = steering_program(n)
        assert len(prog) <= BPF_MAXINSNS
        for pc, (code, jt, jf, k) in enumerate(prog):
            if code & 0x07 == 0x05:
                targets = [pc + 1 + k] if code & 0xF0 == 0 else [pc + 1 + jt, pc + 1 + jf]
                assert all(t < len(prog) for t in targets)
        assert prog[-1][0] & 0x07 == 0x06  # ends with RET
    with pytest.raises(ValueError):
        steering_program(11)


@pytest.mark.parametrize("workers", [2, 3, 4, 7, 10])
def test_initial_and_in_dialog_requests_steer_to_the_owner(workers):
    for i in range(_examples(200)):
        user = f"user{i}" if i % 3 else f"User.{i}-X_y"
        for method in ("PUBLISH", "SUBSCRIBE"):
            pkt = request(method, f"sip:{user}@127.0.0.1")
            want = Partitioner(workers, 0, KEY).classify(pkt)
            assert steer(workers, pkt) == want, (method, user)
        # in-dialog: the Request-URI is a worker's Contact, which names the user
        tag = f"h{partition_hash(KEY(f'sip:{user}@127.0.0.1')):04x}.0011223344556677"
        pkt = request("SUBSCRIBE", f"sip:{user}@127.0.0.1:5060", to_tag=tag)
        assert steer(workers, pkt) == Partitioner(workers, 0, KEY).classify(pkt)


@pytest.mark.parametrize("workers", [2, 5, 10])
def test_responses_steer_by_our_via_branch(workers):
    for w in range(workers):
        for host in ("127.0.0.1:5060", "[2001:db8::1]:5060", "presence-01.example.com:5060"):
            pkt = response(f"z9hG4bKw{w}.0123456789abcdef", host)
            assert steer(workers, pkt) == w == Partitioner(workers, 0, KEY).classify(pkt)


def test_what_the_program_cannot_decide_goes_to_the_kernels_hash():
    n = 4
    assert steer(n, request("SUBSCRIBE", "sip:127.0.0.1:5060", to_tag="h0001.aa")) is None  # no user part
    assert steer(n, request("PUBLISH", "sips:alice@example.com")) is None
    assert steer(n, request("PUBLISH", "tel:+15551234")) is None
    assert steer(n, request("OPTIONS", "sip:alice@example.com")) is None
    assert steer(n, request("NOTIFY", "sip:alice@example.com")) is None
    assert steer(n, request("PUBLISH", "sip:" + "u" * 49 + "@example.com")) is None  # user too long
    assert steer(n, request("PUBLISH", "sip:" + "u" * 48 + "@example.com")) is not None  # the longest steered
    assert steer(n, response("z9hG4bKabcdef")) is None        # a single-process branch
    assert steer(n, response("z9hG4bKw7.abc")) is None       # a worker index beyond N
    assert steer(n, response("z9hG4bKw1x.abc")) is None
    far = response("z9hG4bKw1.abc", host="h" * 200 + ".example.com:5060")
    assert steer(n, far) is None                              # top Via branch beyond the window
    assert steer(n, b"PUBL") == 0                             # truncated: the kernel's "0" (worker 0 forwards)


@settings(max_examples=_examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_break_the_program(data):
    i = run_bpf(steering_program(3), data)
    assert i == STEER_NONE or 0 <= i < 3 or i < 10  # digits 0-9 beyond N fall back in the kernel


@settings(max_examples=_examples(200), deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="@ ;?<>\"%:"),
               min_size=1, max_size=48))
def test_any_plain_user_part_hashes_like_the_partitioner(user):
    pkt = request("PUBLISH", f"sip:{user}@example.com")
    want = Partitioner(6, 0, KEY).classify(pkt)
    assert steer(6, pkt) == want


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_ATTACH_REUSEPORT_CBPF is Linux-only")
def test_the_kernel_runs_the_program_on_a_reuseport_group():
    from presenced.transport.udp import attach_steering, udp_socket_group

    workers = 3
    group = udp_socket_group("127.0.0.1", 0, workers)
    try:
        attach_steering(group[0], steering_program(workers))
        port = group[0].getsockname()[1]
        assert all(s.getsockname()[1] == port for s in group)
        for s in group:
            s.settimeout(2)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cases = [request("PUBLISH", f"sip:user{i}@127.0.0.1") for i in range(30)]
        cases += [response(f"z9hG4bKw{w}.abc") for w in range(workers)]
        for pkt in cases:
            want = Partitioner(workers, 0, KEY).classify(pkt)
            sender.sendto(pkt, ("127.0.0.1", port))
            got = group[want].recv(65535)
            assert got == pkt
        for s in group:  # nothing landed anywhere else
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(65535)
        sender.close()
    finally:
        for s in group:
            s.close()


def test_a_held_port_is_refused_not_shared():
    from presenced.transport.udp import udp_socket, udp_socket_group

    held = udp_socket("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            udp_socket_group("127.0.0.1", held.getsockname()[1], 2)
        group = udp_socket_group("127.0.0.1", 0, 2)
        port = group[0].getsockname()[1]
        with pytest.raises(OSError):  # a second server on a steered port fails too
            udp_socket_group("127.0.0.1", port, 2)
        for s in group:
            s.close()
    finally:
        held.close()


def _supervisor(workers: int, steering: str = "kernel"):
    from presenced.config import load_config
    from presenced.runtime.supervisor import Supervisor

    cfg = load_config(None, [f"core.workers={workers}", f"core.udp_steering={steering}"])
    return Supervisor(cfg, ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"], workers, build=None)  # type: ignore[arg-type]


def _close(sup) -> None:
    for entry in sup.sockets:
        for s in entry if isinstance(entry, list) else [entry]:
            s.close()
    for links in sup.links.values():
        for s in links.values():
            s.close()


def test_supervisor_binds_one_steered_socket_per_worker():
    sup = _supervisor(3)
    try:
        sup.bind()
        group, tcp = sup.sockets
        assert isinstance(group, list) and len(group) == 3
        assert len({s.getsockname() for s in group}) == 1
        assert not isinstance(tcp, list)
    finally:
        _close(sup)


def test_shared_steering_binds_one_socket():
    sup = _supervisor(2, "shared")
    try:
        sup.bind()
        assert not isinstance(sup.sockets[0], list)
    finally:
        _close(sup)


def test_a_kernel_refusing_the_program_leaves_hash_spreading(monkeypatch, caplog):
    from presenced.runtime import supervisor as sup_mod

    def refuse(sock, program):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(sup_mod, "attach_steering", refuse)
    sup = _supervisor(2)
    try:
        with caplog.at_level("WARNING"):
            sup.bind()
        assert isinstance(sup.sockets[0], list) and len(sup.sockets[0]) == 2
        assert "refused the steering program" in caplog.text
    finally:
        _close(sup)


def test_more_than_ten_workers_are_spread_by_the_kernels_hash(caplog):
    sup = _supervisor(12)
    try:
        with caplog.at_level("WARNING"):
            sup.bind()
        assert len(sup.sockets[0]) == 12
        assert "more than 10 workers" in caplog.text
    finally:
        _close(sup)
