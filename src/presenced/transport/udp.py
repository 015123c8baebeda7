"""UDP listener: one datagram is one SIP message (RFC 3261 §18.3)."""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from presenced.transaction.layer import Address

MAX_DATAGRAM = 65535
_BLANK = (b"", b"\r", b"\n", b"\x00", b" ")  # RFC 3261 §18.1.1: must accept up to 65,535 bytes


class UdpListener(asyncio.DatagramProtocol):
    """Receives datagrams and hands them to `on_message(data, source, local)`."""

    def __init__(self, host: str, port: int, on_message: Callable[[bytes, Address, tuple[str, int]], None]) -> None:
        self.host = host
        self.port = port
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None
        self._local_for_peer: dict[str, str] = {}
        self.wildcard = host in ("0.0.0.0", "::", "")
        self._peers: dict[tuple, tuple[Address, tuple[str, int]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.port = sockname[1]
        self._peers.clear()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data[:1] in _BLANK and not data.strip(b"\r\n\x00 "):
            return  # keep-alive datagram
        # Peers repeat: one Address (and local address) per peer, not per datagram.
        peer = self._peers.get(addr)
        if peer is None:
            host, port = addr[0], addr[1]
            local_host = self.local_address_for(host) if self.wildcard else self.host
            peer = (Address("udp", host, port, self), (local_host, self.port))
            if len(self._peers) >= 10000:
                self._peers.clear()
            self._peers[addr] = peer
        self.on_message(data, peer[0], peer[1])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for earlier sends; the transaction layer times out

    def send(self, data: bytes, host: str, port: int) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.sendto(data, (host, port))

    def local_address_for(self, peer: str) -> str:
        """Which local address routes to `peer` (for Via/Contact when bound to a wildcard)."""
        cached = self._local_for_peer.get(peer)
        if cached is not None:
            return cached
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))
                local = s.getsockname()[0]
        except OSError:
            local = "127.0.0.1" if family == socket.AF_INET else "::1"
        if len(self._local_for_peer) > 10000:
            self._local_for_peer.clear()
        self._local_for_peer[peer] = local
        return local


async def start_udp(host: str, port: int, on_message, sock: socket.socket | None = None) -> UdpListener:
    """Listen on host:port, or on `sock`, bound by the supervisor of several
    workers (this worker's socket of a steered SO_REUSEPORT group, or with
    `udp_steering = "shared"` one socket every worker reads)."""
    loop = asyncio.get_running_loop()
    if sock is None:
        sock = udp_socket(host, port)
    sock.setblocking(False)
    _, proto = await loop.create_datagram_endpoint(lambda: UdpListener(host, port, on_message), sock=sock)
    return proto


def udp_socket(host: str, port: int, reuseport: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # No SO_REUSEADDR: on UDP it lets a second process bind the same port and
    # silently take part of the traffic (the reason asyncio dropped it, bpo-37228).
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        except OSError:
            pass
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # linux/asm-generic/socket.h


def udp_socket_group(host: str, port: int, size: int) -> list[socket.socket]:
    """`size` UDP sockets bound to one address with SO_REUSEPORT, one per worker,
    so the kernel hands each datagram to one of them (no thundering herd).

    A probe without SO_REUSEPORT binds first: if anything (a second presenced
    included) holds the port, this fails with EADDRINUSE instead of silently
    sharing the traffic with it."""
    if port != 0:
        udp_socket(host, port).close()
    group: list[socket.socket] = []
    try:
        for _ in range(size):
            s = udp_socket(host, port, reuseport=True)
            group.append(s)
            port = s.getsockname()[1]
    except OSError:
        for s in group:
            s.close()
        raise
    return group


def attach_steering(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program choosing the socket of `sock`'s reuseport
    group for each datagram (SO_ATTACH_REUSEPORT_CBPF; no privilege needed).
    Raises OSError where the kernel refuses it."""
    import ctypes
    import struct

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    insns = (SockFilter * len(program))(*(SockFilter(c, jt, jf, k) for c, jt, jf, k in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(insns))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
