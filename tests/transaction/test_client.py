"""Non-INVITE client transactions, RFC 3261 §17.1.2.2 / §17.1.3 (sans-I/O)."""

from __future__ import annotations

import pytest

from presenced.transaction import Address, ClientTransaction, new_branch

from txharness import TCP_PEER, UDP_PEER, Harness, Recorder, response

NOTIFY = b"NOTIFY sip:bob@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKcli1\r\n\r\n"
BRANCH = "z9hG4bKcli1"

# Timer E over UDP with T1=0.5, T2=4: 0.5, 1, 2, 4, 4, 4, ... after the first send.
UDP_SEND_TIMES = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def start(h: Harness, dest: Address = UDP_PEER, branch: str = BRANCH, method: str = "NOTIFY"):
    rec = Recorder(h)
    ct = h.layer.send_request(NOTIFY, branch, method, dest, h.now, rec)
    assert isinstance(ct, ClientTransaction)
    return ct, rec


def approx_list(xs):
    return pytest.approx(xs, abs=1e-9)


def test_initial_send_goes_to_outbox(h):
    ct, rec = start(h)
    assert h.take() == [(NOTIFY, UDP_PEER, ct)]
    assert rec.calls == []


def test_udp_retransmission_schedule_and_timer_f(h):
    ct, rec = start(h)
    h.advance_to(31.99)
    assert h.send_times(ct) == approx_list(UDP_SEND_TIMES)
    intervals = [b - a for a, b in zip(UDP_SEND_TIMES, UDP_SEND_TIMES[1:])]
    assert intervals[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(data == NOTIFY and dest == UDP_PEER for _, data, dest, _ in h.sent)
    assert rec.calls == []
    h.advance_to(32.0)
    assert rec.calls == [(32.0, None)]
    assert h.layer.stats["client_timeouts"] == 1
    assert h.layer.stats["notify_retransmits"] == len(UDP_SEND_TIMES) - 1
    h.advance_to(200.0)
    assert h.send_times(ct) == approx_list(UDP_SEND_TIMES)  # nothing after F
    assert rec.calls == [(32.0, None)]  # exactly once
    assert h.timers.next_deadline() is None


def test_timer_f_terminates_transaction(h):
    ct, rec = start(h)
    h.advance_to(33.0)
    assert ct.key not in h.layer.client
    # A response arriving after the timeout is stray, not a second result.
    assert h.layer.receive_response(response(200, BRANCH), h.now) is False
    assert rec.results == [None]
    assert h.layer.stats["stray_responses"] == 1


def test_timers_follow_configured_t1_t2():
    h = Harness(t1=0.1, t2=0.4, t4=1.0)
    ct, rec = start(h)
    h.advance_to(6.39)
    times = h.send_times(ct)
    assert times[:6] == approx_list([0.0, 0.1, 0.3, 0.7, 1.1, 1.5])
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.1 - 1e-9 <= g <= 0.4 + 1e-9 for g in gaps)
    assert rec.calls == []
    h.advance_to(6.4)
    assert rec.results == [None]


def test_provisional_moves_to_proceeding_with_t2_retransmissions(h):
    ct, rec = start(h)
    h.advance_to(0.2)
    assert h.layer.receive_response(response(100, BRANCH), h.now) is True
    assert rec.calls == []
    h.advance_to(31.99)
    # Timer E already armed for 0.5 still fires, then every T2.
    assert h.send_times(ct) == approx_list([0.0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5])
    h.advance_to(32.0)
    assert rec.calls == [(32.0, None)]  # Timer F still applies in Proceeding


def test_provisional_later_in_trying(h):
    ct, rec = start(h)
    h.advance_to(2.0)  # sent at 0, 0.5, 1.5; next armed for 3.5
    assert h.layer.receive_response(response(180, BRANCH), h.now) is True
    h.advance_to(16.0)
    assert h.send_times(ct) == approx_list([0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
    # A further 1xx changes nothing.
    assert h.layer.receive_response(response(180, BRANCH), h.now) is True
    assert rec.calls == []


def test_final_response_stops_retransmission_and_reports_once(h):
    ct, rec = start(h)
    h.advance_to(2.0)
    resp = response(200, BRANCH)
    assert h.layer.receive_response(resp, h.now) is True
    assert rec.calls == [(2.0, resp)]
    h.advance_to(6.9)
    # Retransmitted final inside Timer K (T4 = 5 s): absorbed, no callback.
    assert h.layer.receive_response(response(200, BRANCH), h.now) is True
    assert h.layer.receive_response(response(100, BRANCH), h.now) is True
    assert rec.calls == [(2.0, resp)]
    h.advance_to(7.1)
    assert h.layer.receive_response(response(200, BRANCH), h.now) is False
    assert h.layer.stats["stray_responses"] == 1
    h.advance_to(100.0)
    assert h.send_times(ct) == approx_list([0.0, 0.5, 1.5])
    assert rec.calls == [(2.0, resp)]  # Timer F never reported
    assert h.layer.stats["client_timeouts"] == 0
    assert h.layer.client == {}


@pytest.mark.parametrize("status", [200, 202, 299, 300, 404, 481, 489, 500, 503, 600, 699])
def test_every_final_class_completes(h, status):
    ct, rec = start(h)
    resp = response(status, BRANCH)
    assert h.layer.receive_response(resp, h.now) is True
    h.advance_to(50.0)
    assert rec.results == [resp]
    assert h.send_times(ct) == [0.0]


def test_tcp_never_retransmits_but_timer_f_fires(h):
    ct, rec = start(h, TCP_PEER)
    h.advance_to(31.99)
    assert h.send_times(ct) == [0.0]
    assert rec.calls == []
    h.advance_to(32.0)
    assert rec.calls == [(32.0, None)]
    h.advance_to(100.0)
    assert h.send_times(ct) == [0.0]
    assert h.layer.stats["notify_retransmits"] == 0


def test_tcp_final_terminates_immediately(h):
    ct, rec = start(h, TCP_PEER)
    h.advance_to(1.0)
    resp = response(200, BRANCH)
    assert h.layer.receive_response(resp, h.now) is True
    assert rec.results == [resp]
    # Timer K is 0 on reliable transports: a retransmission is already stray.
    assert h.layer.receive_response(response(200, BRANCH), h.now) is False
    assert h.layer.client == {}
    h.advance_to(100.0)
    assert rec.results == [resp]


def test_tcp_provisional_does_not_start_retransmission(h):
    ct, rec = start(h, TCP_PEER)
    assert h.layer.receive_response(response(100, BRANCH), h.now) is True
    h.advance_to(31.0)
    assert h.send_times(ct) == [0.0]


def test_matching_needs_branch_and_cseq_method(h):
    ct, rec = start(h, branch=BRANCH, method="NOTIFY")
    assert h.layer.receive_response(response(200, BRANCH, "SUBSCRIBE"), h.now) is False
    assert h.layer.receive_response(response(200, "z9hG4bKother", "NOTIFY"), h.now) is False
    assert h.layer.receive_response(response(200, None, "NOTIFY"), h.now) is False
    assert h.layer.stats["stray_responses"] == 3
    assert rec.calls == []
    h.advance_to(1.0)
    assert h.send_times(ct) == [0.0, 0.5]  # still retransmitting
    resp = response(200, BRANCH, "NOTIFY")
    assert h.layer.receive_response(resp, h.now) is True
    assert rec.results == [resp]


def test_same_branch_two_methods_are_two_transactions(h):
    notify, rec_n = start(h, branch=BRANCH, method="NOTIFY")
    sub, rec_s = start(h, branch=BRANCH, method="SUBSCRIBE")
    r = response(200, BRANCH, "SUBSCRIBE")
    assert h.layer.receive_response(r, h.now) is True
    assert rec_s.results == [r] and rec_n.results == []
    h.advance_to(40.0)
    assert rec_n.results == [None]


def test_transport_failed_reports_none_immediately_once(h):
    ct, rec = start(h, TCP_PEER)
    h.advance_to(0.1)
    h.layer.transport_failed(ct, h.now)
    assert rec.calls == [(0.1, None)]
    h.layer.transport_failed(ct, h.now)
    h.advance_to(100.0)
    assert rec.results == [None]
    assert ct.key not in h.layer.client
    assert h.layer.receive_response(response(200, BRANCH), h.now) is False


def test_transport_failed_over_udp_stops_retransmissions(h):
    ct, rec = start(h)
    h.advance_to(1.0)
    h.layer.transport_failed(ct, h.now)
    h.advance_to(100.0)
    assert h.send_times(ct) == [0.0, 0.5]
    assert rec.results == [None]


def test_transport_failed_after_final_is_ignored(h):
    ct, rec = start(h)
    resp = response(200, BRANCH)
    h.layer.receive_response(resp, h.now)
    h.layer.transport_failed(ct, h.now)
    assert rec.results == [resp]


@pytest.mark.parametrize(
    "via",
    [
        None,  # no Via at all
        "garbage",  # malformed sent-protocol
        "SIP/2.0/UDP",  # no sent-by
        "SIP/2.0/UDP 198.51.100.1:99999;branch=z9hG4bKcli1",  # port out of range
        "SIP/2.0/UDP 198.51.100.1:\u00b2;branch=z9hG4bKcli1",  # non-ASCII digit port
        'SIP/2.0/UDP 198.51.100.1;branch="z9hG4bKcli1',  # unterminated quote
    ],
)
def test_response_with_bad_or_missing_via_is_stray(h, via):
    ct, rec = start(h)
    assert h.layer.receive_response(response(200, BRANCH, via=via), h.now) is False
    assert h.layer.stats["stray_responses"] == 1
    assert rec.calls == []


def test_response_without_cseq_is_stray(h):
    from presenced.sip.message import parse_message

    raw = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKcli1\r\n"
        "Call-ID: x\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    ct, rec = start(h)
    assert h.layer.receive_response(parse_message(raw), h.now) is False
    assert rec.calls == []


def test_concurrent_transactions_are_independent(h):
    branches = [new_branch() for _ in range(3)]
    assert len(set(branches)) == 3 and all(b.startswith("z9hG4bK") for b in branches)
    started = [start(h, branch=b) for b in branches]
    h.advance_to(1.0)
    r = response(200, branches[1])
    assert h.layer.receive_response(r, h.now) is True
    h.advance_to(40.0)
    assert [rec.results for _, rec in started] == [[None], [r], [None]]
    assert h.send_times(started[1][0]) == [0.0, 0.5]
    assert len(h.send_times(started[0][0])) == len(UDP_SEND_TIMES)


def test_callback_may_start_a_new_transaction(h):
    """The TU commonly sends the next NOTIFY from inside on_result."""
    followups: list[ClientTransaction] = []
    rec2 = Recorder(h)

    def on_result(resp, now):
        followups.append(h.layer.send_request(NOTIFY, "z9hG4bKnext", "NOTIFY", UDP_PEER, h.now, rec2))

    h.layer.send_request(NOTIFY, BRANCH, "NOTIFY", UDP_PEER, h.now, on_result)
    h.advance_to(32.0)
    assert len(followups) == 1
    h.advance_to(64.0)
    assert rec2.calls == [(64.0, None)]
    assert h.send_times(followups[0])[:3] == approx_list([32.0, 32.5, 33.5])


def test_answered_udp_request_leaves_only_timer_k_behind(h):
    """Memory: once answered, a NOTIFY's bytes and callback are let go and no
    32 s Timer F entry stays in the heap (Timer E doubles as F over UDP)."""
    ct, rec = start(h)
    h.advance_to(0.2)
    assert h.layer.receive_response(response(200, BRANCH), h.now) is True
    assert rec.calls == [(0.2, rec.results[0])] and rec.results[0].status == 200
    assert ct.data == b""
    assert h.layer.receive_response(response(200, BRANCH), h.now) is True  # absorbed by Timer K
    assert len(rec.calls) == 1
    h.advance_to(0.2 + 5.0)
    assert ct.key not in h.layer.client
    assert len(h.timers) == 0  # no cancelled Timer F entry waiting for its 32 s


def test_an_answered_notify_leaves_no_deadline_to_wake_up_for(h):
    """After the 2xx, nothing is due until Timer K (lax, reported late): the
    first Timer E, T1 after the send, no longer wakes the runtime for
    nothing (at 200 NOTIFYs/s that was a wake-up every few ms). An
    unanswered one still retransmits at T1."""
    ct, rec = start(h)
    other, _ = start(h, branch="z9hG4bKcli2")
    assert h.timers.next_deadline() == pytest.approx(h.now + 0.5)
    assert h.layer.receive_response(response(200, BRANCH), h.now) is True
    assert h.timers.next_deadline() == pytest.approx(h.now + 0.5)  # the other one still waits
    assert h.layer.receive_response(response(200, "z9hG4bKcli2"), h.now) is True
    assert h.timers.next_deadline() == pytest.approx(h.now + 5.0)  # only Timer K's absorb entries
    assert h.timers.next_deadline(lax_slack=1.0) == pytest.approx(h.now + 6.0)


def test_request_moved_to_tcp_falls_back_to_udp_when_tcp_fails(h):
    """A NOTIFY sent over TCP only for its size (RFC 3261 §18.1.1) goes over
    UDP when the peer takes no TCP: Via back to UDP, Timer E from then on, the
    same Timer F deadline, and an answer still completes it."""
    data = NOTIFY.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    rec = Recorder(h)
    ct = h.layer.send_request(data, BRANCH, "NOTIFY", TCP_PEER, h.now, rec)
    ct.udp_fallback = UDP_PEER
    assert h.take() == [(data, TCP_PEER, ct)]
    h.advance_to(0.2)
    assert h.layer.fall_back_to_udp(ct, h.now) is True
    assert h.take() == [(NOTIFY, UDP_PEER, ct)]  # Via says UDP again
    assert h.layer.fall_back_to_udp(ct, h.now) is False  # once
    h.advance_to(1.8)
    assert h.send_times(ct) == approx_list([0.7, 1.7])  # Timer E: T1, then 2*T1
    resp = response(200, BRANCH)
    assert h.layer.receive_response(resp, h.now) is True
    assert rec.results == [resp]
    h.advance_to(40.0)
    assert rec.results == [resp]


def test_udp_fallback_keeps_the_timer_f_deadline(h):
    rec = Recorder(h)
    ct = h.layer.send_request(NOTIFY, BRANCH, "NOTIFY", TCP_PEER, h.now, rec)
    ct.udp_fallback = UDP_PEER
    h.advance_to(10.0)
    assert h.layer.fall_back_to_udp(ct, h.now) is True
    h.advance_to(31.9)
    assert rec.calls == []
    h.advance_to(32.1)
    assert rec.results == [None]


def test_no_udp_fallback_for_a_request_that_chose_tcp(h):
    ct, rec = start(h, TCP_PEER)
    assert h.layer.fall_back_to_udp(ct, h.now) is False
    h.layer.transport_failed(ct, h.now)
    assert rec.results == [None]
