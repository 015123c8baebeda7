"""RFC 3261 §17 non-INVITE transactions, sans-I/O.

Server side: a retransmitted request is matched to its transaction and gets
the identical final response (the latest provisional while Proceeding,
nothing while the TU is still working); further responses from the TU after
the final one are discarded; the transaction lingers for Timer J (64*T1,
on reliable transports too, where RFC 3261 allows 0). At 3,000 requests/s about 96,000 transactions
linger at any time, so a completed one is replaced by a `Completed` tuple
that holds only what answering a retransmission needs: its key, where the
final response lies in a `ResponseLog` and where it went; no object the
cyclic GC has to scan more than once.

Client side (our NOTIFYs): Timer E retransmits over UDP with back-off up to
T2, Timer F gives up after 64*T1, Timer K absorbs late responses. The TU gets
exactly one result: the final response, or None on timeout. Over UDP Timer E
also plays Timer F (its last firing is capped at the F deadline), so an
answered NOTIFY leaves no 32 s heap entry behind, and a finished transaction
drops its request bytes and callback (memory: one NOTIFY per SUBSCRIBE).

Time is always passed in; nothing here reads a clock or touches a socket.
Bytes to send are appended to `outbox` as (data, Address, client transaction
or None); the runtime reports a send failure back with `transport_failed`.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Callable

from presenced.transaction.timers import DelayQueue, TimerHandle, TimerHeap
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, Response
from presenced.sip import tokens
from presenced.sip.tokens import token_hex

T1 = 0.5
T2 = 4.0
T4 = 5.0

MAGIC = "z9hG4bK"


@dataclass(slots=True, frozen=True)
class Address:
    """Where to send bytes: transport name, host, port and, for stream
    transports, the connection a message arrived on (reused when still open)."""

    transport: str
    host: str
    port: int
    conn: Any = None

    @property
    def reliable(self) -> bool:
        t = self.transport
        return t != "udp" and t != "UDP"


_SHARED_ADDRESSES: dict[tuple[str, str, int], Address] = {}


def share(cache: dict, key: Any, value: Any, limit: int) -> Any:
    """The value `cache` holds for key, else `value`, remembered (memory: many
    records hold equal immutable values; the cache is cleared when full)."""
    shared = cache.get(key)
    if shared is None:
        if len(cache) >= limit:
            cache.clear()
        shared = cache[key] = value
    return shared


def shared_address(addr: Address) -> Address:
    """One Address object per connectionless destination (the transport makes
    one per datagram; records and lingering transactions would each keep theirs)."""
    if addr.conn is not None:
        return addr
    return share(_SHARED_ADDRESSES, (addr.transport, addr.host, addr.port), addr, 10000)


def udp_address(host: str, port: int) -> Address:
    shared = _SHARED_ADDRESSES.get(("udp", host, port))
    return shared if shared is not None else shared_address(Address("udp", host, port, None))


def new_branch() -> str:
    return MAGIC + tokens.BRANCH_MARK + token_hex(8)


# (Via host, port) -> " host:port " lowercased: the middle of a transaction key.
_SENT_BY: dict[tuple[str, int | None], str] = {}


def server_key(req: Request) -> str | tuple:
    """§17.2.3: branch, sent-by and method. One string, not a tuple: lingering
    transactions are kept by the hundred thousand, and a string is nothing
    the cyclic GC has to look at."""
    via = req.top_via
    method = "INVITE" if req.method == "ACK" else req.method
    branch = via.branch
    if branch and branch.startswith(MAGIC):
        raw = (via.host, via.port)
        sent_by = _SENT_BY.get(raw)
        if sent_by is None:
            port = raw[1]
            sent_by = share(_SENT_BY, raw, f" {raw[0].lower()}:{'' if port is None else port} ", 4096)
        return branch + sent_by + method
    # RFC 2543 peers: no usable branch, match on the request identifiers
    # (§17.2.3: Request-URI, From tag, Call-ID, CSeq, top Via).
    from_tag = req.from_.tag
    return ("2543", req.uri_text, req.call_id, from_tag, req.cseq.seq, method, via.raw)


class ServerTransaction:
    __slots__ = ("key", "source", "last_response", "provisional", "timer", "method")

    def __init__(self, key: str | tuple, source: Address, method: str) -> None:
        self.key = key
        self.source = source
        self.method = method
        # The final response (set once: the transaction is then Completed).
        self.last_response: tuple[bytes, Address] | None = None
        # The most recent provisional response (Proceeding state).
        self.provisional: tuple[bytes, Address] | None = None
        self.timer: TimerHandle | None = None

    @property
    def completed(self) -> bool:
        return self.last_response is not None


class ResponseLog:
    """The final responses of lingering UDP transactions, written one after
    the other into anonymous memory mappings of CHUNK bytes.

    A response is addressed by (chunk number, span): numbers, so what holds
    one is nothing the cyclic GC looks at (an mmap is GC-tracked). Every
    `put` is matched by one `release` (Timer J); a mapping is unmapped as a
    whole when its last response is released. As Python objects, ~100,000
    responses of ~450 bytes would leave their freed blocks in CPython's heap,
    where they stay resident (bench/state_memory.py).
    """

    CHUNK = 256 * 1024

    __slots__ = ("chunks", "live", "current", "pos")

    def __init__(self) -> None:
        self.chunks: dict[int, mmap.mmap] = {}
        self.live: dict[int, int] = {}  # chunk number -> responses not yet released
        self.current = -1
        self.pos = self.CHUNK

    def put(self, data: bytes) -> tuple[int, int] | None:
        """(chunk number, span) holding `data`; None if it is too big to bother."""
        n = len(data)
        if n >= self.CHUNK // 8:
            return None
        start = self.pos
        number = self.current
        if start + n > self.CHUNK:
            if number in self.chunks and self.live.get(number, 0) == 0:
                self._unmap(number)
            number = self.current = number + 1
            # Private: a forked worker must not share (and overwrite) the parent's.
            self.chunks[number] = mmap.mmap(-1, self.CHUNK, flags=mmap.MAP_PRIVATE)
            self.live[number] = 0
            start = 0
        self.chunks[number][start:start + n] = data
        self.live[number] += 1
        self.pos = start + n
        return number, (start << 16) | n

    def get(self, number: int, span: int) -> bytes:
        start = span >> 16
        return self.chunks[number][start:start + (span & 0xFFFF)]

    def release(self, number: int) -> None:
        left = self.live[number] - 1
        self.live[number] = left
        if left == 0 and number != self.current:
            self._unmap(number)

    def _unmap(self, number: int) -> None:
        del self.live[number]
        self.chunks.pop(number).close()


# A UDP server transaction after its final response, until Timer J, is a
# `Completed` tuple of strings and numbers (after one young collection CPython
# stops tracking it): (key, response bytes or ResponseLog chunk number, span,
# destination host, destination port, whether the response went out on the
# request's own socket). The socket itself (an object) is not kept: a
# retransmitted request arrives on it again and its source names it.


def _no_result(resp: Response | None, now: float) -> None:
    """on_result of a finished client transaction (its own was called once)."""


class ClientTransaction:
    __slots__ = ("key", "data", "dest", "on_result", "timer_e", "timer_f", "interval", "done", "retransmits", "deadline",
                 "udp_fallback")

    def __init__(self, key: str, data: bytes, dest: Address, on_result: Callable[[Response | None, float], None]) -> None:
        self.key = key  # "<branch> <method>"
        self.data = data
        self.dest = dest
        self.on_result = on_result
        self.timer_e: TimerHandle | None = None
        self.timer_f: TimerHandle | None = None
        self.interval = T1
        self.done = False
        self.retransmits = 0
        self.deadline = 0.0  # Timer F
        # Where a request moved to TCP for its size (RFC 3261 §18.1.1) goes
        # instead when the peer takes no TCP connection: its UDP address.
        self.udp_fallback: Address | None = None

    def result(self, resp: Response | None, now: float) -> None:
        """Hand the outcome to the TU, once, and let go of what only retransmitting needed."""
        on_result = self.on_result
        self.on_result = _no_result
        self.data = b""
        on_result(resp, now)


class TransactionLayer:
    def __init__(self, timers: TimerHeap, t1: float = T1, t2: float = T2, t4: float = T4) -> None:
        self.timers = timers
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.server: dict[str | tuple, ServerTransaction | tuple] = {}
        self.client: dict[str, ClientTransaction] = {}
        self.outbox: list[tuple[bytes, Address, ClientTransaction | None]] = []
        # Timers J and K have fixed durations: queues instead of a heap entry each.
        self._linger = DelayQueue(timers, self._timer_j, lax=True)
        self._responses = ResponseLog()
        # Timer K: the keys of answered UDP NOTIFYs whose retransmitted
        # final responses are still absorbed (strings: the transaction itself
        # is gone once its result is reported).
        self._absorbing: set[str] = set()
        self._absorb = DelayQueue(timers, self._timer_k, lax=True)
        # Timer E's first firing is T1 after sending, for every UDP NOTIFY: a
        # queue, not a heap entry and handle each (only a retransmission,
        # rare, takes the heap).
        self._first_e = DelayQueue(timers, self._first_timer_e, live=self._awaiting_answer)
        self.stats = {"retransmissions_absorbed": 0, "notify_retransmits": 0, "client_timeouts": 0, "stray_responses": 0}

    # -- server side -------------------------------------------------------
    def receive_request(self, req: Request, source: Address) -> ServerTransaction | None:
        """Return a new transaction for a new request, or None for a
        retransmission (which has then been answered from the transaction)."""
        key = server_key(req)
        st = self.server.get(key)
        if st is not None:
            self.stats["retransmissions_absorbed"] += 1
            if type(st) is tuple:
                if req.method != "ACK":
                    data = st[1]
                    if type(data) is not bytes:
                        data = self._responses.get(data, st[2])
                    if source.reliable:
                        dest = source
                    elif st[5]:
                        dest = Address("udp", st[3], st[4], source.conn)
                    else:
                        dest = udp_address(st[3], st[4])
                    self.outbox.append((data, dest, None))
                return None
            assert isinstance(st, ServerTransaction)
            # Completed: the final response; Proceeding: the latest provisional
            # (§17.2.2); Trying: nothing.
            last = st.last_response or st.provisional
            if last is not None and req.method != "ACK":
                data, dest = last
                self.outbox.append((data, source if source.reliable else dest, None))
            return None
        if req.method == "ACK":
            return None  # ACK to a non-2xx final we sent: absorbed
        st = ServerTransaction(key, source, req.method)
        self.server[key] = st
        return st

    def respond(self, st: ServerTransaction, data: bytes, dest: Address, now: float, final: bool = True) -> None:
        if st.last_response is not None:
            # §17.2.2: any other response from the TU once Completed is discarded.
            return
        self.outbox.append((data, dest, None))
        if not final:
            st.provisional = (data, dest)
            return
        st.last_response = (data, dest)
        # Timer J. RFC 3261 lets a reliable transport forget at once (J = 0),
        # but a client that sends the same request again on a stream (a new
        # connection after a broken one, a proxy's copy) must not see it
        # handled twice: a second SUBSCRIBE dialog, a second publication.
        linger = 64 * self.t1
        logged = self._responses.put(data)
        done: tuple
        own_socket = dest.conn is not None
        if logged is None:
            done = (st.key, data, 0, dest.host, dest.port, own_socket)
        else:
            done = (st.key, logged[0], logged[1], dest.host, dest.port, own_socket)
        if self.server.get(st.key) is st:
            self.server[st.key] = done
        when = now + linger
        if not self._linger.add(when, done):
            self.timers.schedule(when, self._timer_j, done)

    def _timer_j(self, now: float, done: tuple) -> None:
        key = done[0]
        if self.server.get(key) is done:
            del self.server[key]
        if type(done[1]) is not bytes:
            self._responses.release(done[1])

    # -- client side -------------------------------------------------------
    def send_request(
        self, data: bytes, branch: str, method: str, dest: Address, now: float,
        on_result: Callable[[Response | None, float], None],
    ) -> ClientTransaction:
        key = branch + " " + method  # §17.1.3; a string: nothing for the GC to scan
        ct = ClientTransaction(key, data, dest, on_result)
        ct.interval = self.t1
        self.client[key] = ct
        self.outbox.append((data, dest, ct))
        deadline = ct.deadline = now + 64 * self.t1
        if not dest.reliable:
            first = min(now + self.t1, deadline)
            if not self._first_e.add(first, key):
                ct.timer_e = self.timers.schedule(first, self._timer_e, ct)
        else:
            ct.timer_f = self.timers.schedule(deadline, self._timer_f, ct)
        return ct

    def _awaiting_answer(self, when: float, key: str) -> bool:
        # An answered (or failed) NOTIFY has left `client`: its Timer E is moot.
        return key in self.client

    def _first_timer_e(self, now: float, key: str) -> None:
        # By key: an answered NOTIFY is freed at once, not T1 later.
        ct = self.client.get(key)
        if ct is not None:
            self._timer_e(now, ct)

    def _timer_e(self, now: float, ct: ClientTransaction) -> None:
        if ct.done:
            return
        if now >= ct.deadline:
            self._timer_f(now, ct)
            return
        self.outbox.append((ct.data, ct.dest, ct))
        ct.retransmits += 1
        self.stats["notify_retransmits"] += 1
        ct.interval = min(ct.interval * 2, self.t2)
        ct.timer_e = self.timers.schedule(min(now + ct.interval, ct.deadline), self._timer_e, ct)

    def _timer_f(self, now: float, ct: ClientTransaction) -> None:
        if ct.done:
            return
        self._finish(ct)
        # Terminated: forget the transaction (a late response is stray).
        if self.client.get(ct.key) is ct:
            del self.client[ct.key]
        self.stats["client_timeouts"] += 1
        ct.result(None, now)

    def _finish(self, ct: ClientTransaction) -> None:
        ct.done = True
        if ct.timer_e is not None:
            ct.timer_e.cancel()
        if ct.timer_f is not None:
            ct.timer_f.cancel()

    def _timer_k(self, now: float, key: str) -> None:
        self._absorbing.discard(key)

    def fall_back_to_udp(self, ct: ClientTransaction, now: float) -> bool:
        """A request moved to TCP for its size could not be sent there: send it
        over UDP after all (Via back to UDP, Timer E from now, same Timer F
        deadline). False when `ct` has no UDP address to fall back to."""
        dest = ct.udp_fallback
        if ct.done or dest is None:
            return False
        ct.udp_fallback = None
        if ct.timer_f is not None:
            ct.timer_f.cancel()
            ct.timer_f = None
        ct.dest = dest
        ct.data = ct.data.replace(b"Via: SIP/2.0/TCP ", b"Via: SIP/2.0/UDP ", 1)
        self.outbox.append((ct.data, dest, ct))
        ct.interval = self.t1
        ct.timer_e = self.timers.schedule(min(now + self.t1, ct.deadline), self._timer_e, ct)
        return True

    def transport_failed(self, ct: ClientTransaction, now: float) -> None:
        """The transport could not send (e.g. TCP connect refused): fail now."""
        if ct.done:
            return
        self._finish(ct)
        if self.client.get(ct.key) is ct:
            del self.client[ct.key]
        ct.result(None, now)

    def receive_response(self, resp: Response, now: float) -> bool:
        """Match a response to a client transaction (§17.1.3). False if stray."""
        try:
            branch = resp.top_via.branch
            key = f"{branch} {resp.cseq.method}"
        except (SipParseError, ValueError):
            self.stats["stray_responses"] += 1
            return False
        ct = self.client.get(key) if branch is not None else None
        if ct is None:
            if key in self._absorbing:
                return True  # retransmitted final response absorbed (Timer K)
            self.stats["stray_responses"] += 1
            return False
        if resp.status < 200:
            # Proceeding: keep retransmitting at T2 (UDP).
            if not ct.dest.reliable:
                ct.interval = self.t2
            return True
        self._finish(ct)
        del self.client[ct.key]
        if not ct.dest.reliable:
            self._absorbing.add(ct.key)
            if not self._absorb.add(now + self.t4, ct.key):
                self.timers.schedule(now + self.t4, self._timer_k, ct.key)
        ct.result(resp, now)
        return True
