"""Non-INVITE server transactions, RFC 3261 §17.2.2 / §17.2.3 (sans-I/O)."""

from __future__ import annotations

import pytest

from presenced.transaction import Address, ServerTransaction, server_key

from txharness import TCP_PEER, UDP_PEER, Harness, request

OK = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
ACCEPTED = b"SIP/2.0 202 Accepted\r\nContent-Length: 0\r\n\r\n"
TRYING = b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n"
NOT_ALLOWED = b"SIP/2.0 405 Method Not Allowed\r\nAllow: SUBSCRIBE, PUBLISH\r\nContent-Length: 0\r\n\r\n"

# The response destination the TU picked (§18.2.2: Via received/rport), which
# deliberately differs from the packet source so the tests can tell them apart.
RESP_DEST = Address("udp", "203.0.113.5", 5070)


def new_tx(h: Harness, source: Address = UDP_PEER, **kw) -> ServerTransaction:
    st = h.layer.receive_request(request(**kw), source)
    assert isinstance(st, ServerTransaction)
    return st


# -- creation and absorption -------------------------------------------------

def test_new_request_creates_transaction(h):
    st = h.layer.receive_request(request("SUBSCRIBE"), UDP_PEER)
    assert isinstance(st, ServerTransaction)
    assert st.method == "SUBSCRIBE"
    assert st.source == UDP_PEER
    assert st.last_response is None
    assert h.take() == []
    assert h.layer.stats["retransmissions_absorbed"] == 0


def test_retransmission_before_response_is_absorbed_silently(h):
    st = new_tx(h)
    h.advance(0.5)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    h.advance(1.0)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == []
    assert h.layer.stats["retransmissions_absorbed"] == 2
    # The TU can still answer the original transaction afterwards.
    h.layer.respond(st, OK, RESP_DEST, h.now)
    assert h.take() == [(OK, RESP_DEST, None)]


def test_retransmission_after_final_gets_identical_response(h):
    st = new_tx(h)
    h.layer.respond(st, ACCEPTED, RESP_DEST, h.now)
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]
    for t in (0.5, 1.5, 3.5, 7.5, 11.5):
        h.advance_to(t)
        assert h.layer.receive_request(request(), UDP_PEER) is None
        out = h.take()
        assert out == [(ACCEPTED, RESP_DEST, None)]
    assert h.layer.stats["retransmissions_absorbed"] == 5


def test_retransmission_over_stream_answered_on_its_own_connection(h):
    """Before the final response over TCP (Proceeding), a retransmission that
    arrives on a new connection is answered on that connection."""
    st = new_tx(h, TCP_PEER, transport="TCP")
    h.layer.respond(st, TRYING, TCP_PEER, h.now, final=False)
    assert h.take() == [(TRYING, TCP_PEER, None)]
    other_conn = Address("tcp", "192.0.2.10", 5060, conn="conn-2")
    assert h.layer.receive_request(request(transport="TCP"), other_conn) is None
    assert h.take() == [(TRYING, other_conn, None)]


# -- Timer J -----------------------------------------------------------------

def test_udp_transaction_lingers_for_timer_j(h):
    st = new_tx(h)
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.take()
    h.advance_to(31.9)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == [(OK, RESP_DEST, None)]
    h.advance_to(32.1)
    again = h.layer.receive_request(request(), UDP_PEER)
    assert isinstance(again, ServerTransaction) and again is not st
    assert h.take() == []


def test_retransmitted_response_leaves_on_the_socket_the_request_used(h):
    """With rport the response goes back on the socket the request came in on
    (the runtime's listener rides in Address.conn); so must its
    retransmissions, or a server with several UDP addresses would answer a
    retransmission from the wrong one."""
    listener = object()
    peer = Address("udp", "192.0.2.10", 5060, listener)
    st = h.layer.receive_request(request(), peer)
    assert isinstance(st, ServerTransaction)
    h.layer.respond(st, OK, peer, h.now)
    assert h.take() == [(OK, peer, None)]
    h.advance_to(1.0)
    assert h.layer.receive_request(request(), peer) is None
    (data, dest, ct), = h.take()
    assert data == OK and ct is None
    assert (dest.transport, dest.host, dest.port) == ("udp", "192.0.2.10", 5060) and dest.conn is listener


def test_timer_j_counts_from_the_final_response_not_the_request(h):
    st = new_tx(h)
    h.advance_to(2.0)
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.take()
    h.advance_to(33.9)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == [(OK, RESP_DEST, None)]
    h.advance_to(34.1)
    assert isinstance(h.layer.receive_request(request(), UDP_PEER), ServerTransaction)


def test_timer_j_uses_configured_t1():
    h = Harness(t1=0.1)
    st = new_tx(h)
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.advance_to(6.3)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    h.advance_to(6.5)
    assert isinstance(h.layer.receive_request(request(), UDP_PEER), ServerTransaction)


def test_a_request_sent_again_over_tcp_is_answered_not_run_again(h):
    """RFC 3261 allows Timer J = 0 on streams; presenced keeps the answer for
    64*T1 anyway, so the same request resent (here on a new connection) gets
    the stored response instead of a second dialog or publication."""
    st = new_tx(h, TCP_PEER, transport="TCP")
    h.layer.respond(st, OK, TCP_PEER, h.now)
    assert h.take() == [(OK, TCP_PEER, None)]
    other_conn = Address("tcp", TCP_PEER.host, 40001, conn=object())
    h.advance(31)
    assert h.layer.receive_request(request(transport="TCP"), other_conn) is None
    assert h.take() == [(OK, other_conn, None)]
    h.advance(1.5)
    again = h.layer.receive_request(request(transport="TCP"), TCP_PEER)
    assert isinstance(again, ServerTransaction) and again is not st


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "wss", "sctp"])
def test_reliable_transports_linger_for_timer_j(h, transport):
    src = Address(transport, "192.0.2.10", 5061, conn=object())
    st = new_tx(h, src)
    h.layer.respond(st, OK, src, h.now)
    assert st.key in h.layer.server
    h.advance(64 * 0.5 + 0.1)
    assert st.key not in h.layer.server


def test_udp_transport_name_is_case_insensitive():
    assert not Address("UDP", "192.0.2.1", 5060).reliable
    assert not Address("udp", "192.0.2.1", 5060).reliable
    assert Address("TCP", "192.0.2.1", 5060).reliable


# -- what identifies a transaction (§17.2.3) ----------------------------------

def test_ack_matching_invite_transaction_is_absorbed(h):
    st = new_tx(h, method="INVITE")
    h.layer.respond(st, NOT_ALLOWED, RESP_DEST, h.now)
    h.take()
    ack = request("ACK", cseq_method="ACK", to_tag="srv")
    assert h.layer.receive_request(ack, UDP_PEER) is None
    assert h.take() == []  # an ACK is never answered
    # A retransmitted INVITE still gets the 405.
    assert h.layer.receive_request(request("INVITE"), UDP_PEER) is None
    assert h.take() == [(NOT_ALLOWED, RESP_DEST, None)]


def test_ack_without_transaction_is_absorbed_not_a_new_transaction(h):
    ack = request("ACK", branch="z9hG4bKlate", to_tag="srv")
    assert h.layer.receive_request(ack, UDP_PEER) is None
    assert h.layer.server == {}
    assert h.take() == []


def test_ack_key_equals_invite_key():
    assert server_key(request("ACK")) == server_key(request("INVITE"))


def test_different_branch_is_different_transaction(h):
    a = new_tx(h, branch="z9hG4bKaaa")
    b = new_tx(h, branch="z9hG4bKbbb")
    assert a is not b and a.key != b.key
    h.layer.respond(a, OK, RESP_DEST, h.now)
    h.take()
    # b is still waiting for its TU: its retransmission gets nothing.
    assert h.layer.receive_request(request(branch="z9hG4bKbbb"), UDP_PEER) is None
    assert h.take() == []


def test_same_branch_different_method_are_distinct(h):
    sub = new_tx(h, method="SUBSCRIBE", branch="z9hG4bKsame")
    cancel = new_tx(h, method="CANCEL", branch="z9hG4bKsame")
    assert sub is not cancel
    h.layer.respond(cancel, OK, RESP_DEST, h.now)
    h.take()
    # SUBSCRIBE retransmission: still Trying, nothing is sent (not CANCEL's 200).
    assert h.layer.receive_request(request("SUBSCRIBE", branch="z9hG4bKsame"), UDP_PEER) is None
    assert h.take() == []
    h.layer.respond(sub, ACCEPTED, RESP_DEST, h.now)
    h.take()
    assert h.layer.receive_request(request("CANCEL", branch="z9hG4bKsame"), UDP_PEER) is None
    assert h.take() == [(OK, RESP_DEST, None)]
    assert h.layer.receive_request(request("SUBSCRIBE", branch="z9hG4bKsame"), UDP_PEER) is None
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]


def test_same_branch_different_sent_by_is_distinct(h):
    a = new_tx(h, via_host="192.0.2.10")
    b = new_tx(h, via_host="192.0.2.11")
    c = new_tx(h, via_host="192.0.2.10", via_port=5062)
    assert len({id(a), id(b), id(c)}) == 3


def test_sent_by_host_compared_case_insensitively(h):
    new_tx(h, via_host="Proxy.Example.COM")
    assert h.layer.receive_request(request(via_host="proxy.example.com"), UDP_PEER) is None


def test_rfc2543_request_without_branch_matches_retransmission(h):
    st = new_tx(h, branch=None)
    assert h.layer.receive_request(request(branch=None), UDP_PEER) is None
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.take()
    h.advance(3.0)
    assert h.layer.receive_request(request(branch=None), UDP_PEER) is None
    assert h.take() == [(OK, RESP_DEST, None)]
    # A new request in the same dialog (next CSeq) is a new transaction.
    assert isinstance(h.layer.receive_request(request(branch=None, cseq=2), UDP_PEER), ServerTransaction)
    # So is one with another Request-URI or Call-ID.
    assert isinstance(
        h.layer.receive_request(request(branch=None, uri="sip:carol@example.com"), UDP_PEER), ServerTransaction
    )
    assert isinstance(h.layer.receive_request(request(branch=None, call_id="other"), UDP_PEER), ServerTransaction)


def test_rfc2543_branch_without_magic_cookie(h):
    st = new_tx(h, branch="1")
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.take()
    assert h.layer.receive_request(request(branch="1"), UDP_PEER) is None
    assert h.take() == [(OK, RESP_DEST, None)]
    assert isinstance(h.layer.receive_request(request(branch="1", from_tag="other"), UDP_PEER), ServerTransaction)


def test_rfc2543_ack_matches_invite(h):
    st = new_tx(h, method="INVITE", branch=None)
    h.layer.respond(st, NOT_ALLOWED, RESP_DEST, h.now)
    h.take()
    assert h.layer.receive_request(request("ACK", branch=None, to_tag="srv"), UDP_PEER) is None
    assert h.take() == []


# -- provisional and repeated responses ---------------------------------------

def test_provisional_response_does_not_complete_transaction(h):
    st = new_tx(h)
    h.layer.respond(st, TRYING, RESP_DEST, h.now, final=False)
    assert h.take() == [(TRYING, RESP_DEST, None)]
    assert st.last_response is None  # not stored as the final response
    assert st.timer is None  # no Timer J
    h.advance_to(100.0)
    assert st.key in h.layer.server
    # Proceeding: a retransmission gets the latest provisional (§17.2.2).
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == [(TRYING, RESP_DEST, None)]
    # The final response replaces it and starts Timer J.
    h.layer.respond(st, ACCEPTED, RESP_DEST, h.now)
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]
    assert st.last_response == (ACCEPTED, RESP_DEST)
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]
    h.advance_to(100.0 + 32.1)
    assert st.key not in h.layer.server


def test_second_final_response_is_discarded(h):
    st = new_tx(h)
    h.layer.respond(st, ACCEPTED, RESP_DEST, h.now)
    h.layer.respond(st, OK, RESP_DEST, h.now)
    h.layer.respond(st, TRYING, RESP_DEST, h.now, final=False)
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]
    assert h.layer.receive_request(request(), UDP_PEER) is None
    assert h.take() == [(ACCEPTED, RESP_DEST, None)]
    # One Timer J only.
    assert sum(1 for _, _, cb, t in h.timers._heap if cb is not None or not t.cancelled) + len(h.layer._linger) == 1


def test_respond_after_termination_is_discarded(h):
    st = new_tx(h, TCP_PEER, transport="TCP")
    h.layer.respond(st, OK, TCP_PEER, h.now)
    h.layer.respond(st, OK, TCP_PEER, h.now)
    assert h.take() == [(OK, TCP_PEER, None)]


def test_timer_j_does_not_remove_a_newer_transaction(h):
    st = new_tx(h)
    h.layer.respond(st, OK, RESP_DEST, h.now)
    # Simulate the key having been re-used by a newer transaction.
    newer = type(st)(st.key, UDP_PEER, "SUBSCRIBE")
    h.layer.server[st.key] = newer
    h.advance_to(40.0)
    assert h.layer.server[st.key] is newer


def test_many_transactions_expire_independently(h):
    sts = []
    for i in range(5):
        h.advance_to(float(i * 10))
        st = new_tx(h, branch=f"z9hG4bK{i}")
        h.layer.respond(st, OK, RESP_DEST, h.now)
        sts.append(st)
    # At t=45: responses were at 0,10,20,30,40; J (32 s) has expired for 0 and 10.
    h.advance_to(45.0)
    alive = {key.split(" ")[0] for key in h.layer.server}
    assert alive == {"z9hG4bK2", "z9hG4bK3", "z9hG4bK4"}


def test_response_log_keeps_many_responses_apart():
    """Lingering final responses share memory mappings; each retransmission
    must still get its own response, byte for byte."""
    from presenced.transaction.layer import ResponseLog

    log = ResponseLog()
    stored = []
    for i in range(2000):  # ~2 MB: several mappings
        data = b"SIP/2.0 200 OK\r\nCall-ID: %d\r\n" % i + b"x" * (i % 900)
        stored.append((data, log.put(data)))
    assert all(logged is not None and log.get(*logged) == data for data, logged in stored)
    assert log.put(b"y" * 40000) is None  # too big: the caller keeps the bytes
    mappings = len(log.chunks)
    assert mappings >= 4
    # Released in the order written (Timer J): each mapping goes with its last response.
    for i, (_, logged) in enumerate(stored):
        log.release(logged[0])
        assert len(log.chunks) <= mappings
    assert list(log.chunks) == [log.current]  # only the one still being written
    assert log.get(*log.put(b"again")) == b"again"
