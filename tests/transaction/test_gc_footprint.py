"""What the transaction layer leaves for CPython's cyclic collector.

Every lingering transaction (Timer J: 32 s of every answered UDP request,
Timer K: 5 s of every answered NOTIFY) that is a GC-tracked object is scanned
by the young collection that follows its creation, and by every older one
later; at thousands of requests a second those scans are the server's
latency tail. So what lingers is strings, numbers and tuples of them (which
CPython stops tracking after one collection): keys are strings, a completed
server transaction is a tuple with its response in a ResponseLog, Timer K
keeps only the branch, timer queues allocate nothing per entry, and the
first Timer E of a NOTIFY is a queue entry by branch, not a heap tuple and
a handle holding the transaction.
"""

from __future__ import annotations

import gc

from presenced.transaction import Address, ServerTransaction

from presenced.sip.message import parse_message

from txharness import Harness, Recorder, request_bytes, response_bytes

N = 2000
OK = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
NOTIFY = b"NOTIFY sip:bob@192.0.2.10:5060 SIP/2.0\r\n\r\n"


def tracked() -> int:
    gc.collect()  # also untracks tuples that hold only strings and numbers
    return len(gc.get_objects())


def test_a_lingering_server_transaction_is_untracked_after_one_collection():
    h = Harness()
    peer = Address("udp", "192.0.2.10", 5060)
    reqs = [request_bytes("SUBSCRIBE", branch=f"z9hG4bKgc{i}") for i in range(N)]
    before = tracked()
    for data in reqs:
        st = h.layer.receive_request(parse_message(data), peer)
        assert isinstance(st, ServerTransaction)
        h.layer.respond(st, OK, peer, h.now)
    h.take()
    del st
    grown = tracked() - before
    assert len(h.layer.server) == N
    assert grown <= N * 0.05, f"{grown / N:.2f} tracked objects per lingering transaction"
    # A retransmission is still answered from what is left.
    assert h.layer.receive_request(parse_message(reqs[7]), peer) is None
    assert h.take() == [(OK, peer, None)]
    h.advance(32.0)
    assert h.layer.server == {}


def test_an_answered_notify_leaves_nothing_tracked_during_timer_k():
    h = Harness()
    peer = Address("udp", "192.0.2.10", 5060)
    rec = Recorder(h)
    resps = [response_bytes(200, f"z9hG4bKw0.gc{i}") for i in range(N)]
    before = tracked()
    for i in range(N):
        h.layer.send_request(NOTIFY, f"z9hG4bKw0.gc{i}", "NOTIFY", peer, h.now, rec)
    for data in resps:
        assert h.layer.receive_response(parse_message(data), h.now) is True
    h.take()
    assert len(rec.calls) == N and all(r is not None for _, r in rec.calls)
    rec.calls.clear()  # the recorder kept each (time, response)
    grown = tracked() - before
    assert grown <= N * 0.05, f"{grown / N:.2f} tracked objects per answered NOTIFY"
    h.advance(0.6)  # the first Timer E passes: nothing retransmitted
    assert h.take() == []
    # Retransmitted 200s within Timer K are absorbed, not stray.
    assert h.layer.receive_response(parse_message(resps[3]), h.now) is True
    assert h.layer.stats["stray_responses"] == 0 and rec.calls == []
    h.advance(5.0)  # Timer K: the transactions are gone
    assert h.layer.client == {} and len(h.timers) == 0


def test_a_response_for_another_method_is_stray():
    h = Harness()
    rec = Recorder(h)
    h.layer.send_request(NOTIFY, "z9hG4bKw0.m1", "NOTIFY", Address("udp", "192.0.2.10", 5060), h.now, rec)
    assert h.layer.receive_response(parse_message(response_bytes(200, "z9hG4bKw0.m1", "SUBSCRIBE")), h.now) is False
    assert h.layer.stats["stray_responses"] == 1 and rec.calls == []
    assert h.layer.receive_response(parse_message(response_bytes(200, "z9hG4bKw0.m1", "NOTIFY")), h.now) is True
    assert len(rec.calls) == 1
