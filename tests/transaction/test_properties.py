"""Property tests: random interleavings of time and responses.

The client transaction must report exactly one result (the first final
response delivered before Timer F, else None at Timer F), never retransmit
faster than T1 or slower than T2, and never retransmit after it has finished.
The server transaction must answer every retransmission with exactly the
response the RFC prescribes for its state.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presenced.transaction import Address

from txharness import Harness, Recorder, request, response


# The pure-Python rerun (tests/test_build_mode.py) checks the .py sources
# pass; the compiled run already explored the inputs at full size.
_PURE = bool(os.environ.get("PRESENCED_PURE_PYTHON"))


def _examples(n: int) -> int:
    return max(10, n // 5) if _PURE else n

EPS = 1e-9
BRANCH = "z9hG4bKprop"
DATA = b"NOTIFY sip:bob@192.0.2.10 SIP/2.0\r\n\r\n"

timer_sets = st.sampled_from([(0.5, 4.0, 5.0), (0.1, 0.4, 1.0), (0.5, 0.5, 0.5), (0.25, 8.0, 2.0)])
transports = st.sampled_from(["udp", "tcp"])
statuses = st.sampled_from([100, 180, 183, 199, 200, 202, 299, 302, 404, 481, 489, 500, 503, 603])
advance = st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=12.0, allow_nan=False))
deliver = st.tuples(
    st.just("deliver"),
    statuses,
    st.booleans(),  # delivered twice in a row (network duplicate)
    st.sampled_from(["match", "match", "match", "other-branch", "other-method"]),
)
actions = st.lists(st.one_of(advance, deliver), max_size=40)

SETTINGS = settings(max_examples=_examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(timer_sets, transports, st.sampled_from([0.0, 1234.567]), actions)
def test_client_reports_exactly_once_and_paces_retransmissions(tset, transport, start, acts):
    t1, t2, t4 = tset
    h = Harness(t1, t2, t4)
    h.now = start
    dest = Address(transport, "192.0.2.10", 5060, conn="c" if transport != "udp" else None)
    rec = Recorder(h)
    ct = h.layer.send_request(DATA, BRANCH, "NOTIFY", dest, h.now, rec)

    timer_f = start + 64 * t1
    final = None  # (time, response) of the first final delivered in time
    first_provisional = None
    gone_at = None  # when the transaction leaves the table (Timer K / 0 on TCP)

    for act in acts:
        if act[0] == "advance":
            h.advance(act[1])
            continue
        _, status, dup, which = act
        branch = BRANCH if which != "other-branch" else "z9hG4bKelse"
        method = "NOTIFY" if which != "other-method" else "SUBSCRIBE"
        for _ in range(2 if dup else 1):
            resp = response(status, branch, method)
            got = h.layer.receive_response(resp, h.now)
            if which != "match":
                assert got is False
                continue
            if final is not None:
                expected = gone_at is not None and h.now < gone_at
            else:
                expected = h.now < timer_f  # before Timer F fired
            assert got is expected
            if expected and final is None:
                if status >= 200:
                    final = (h.now, resp)
                    gone_at = h.now + t4 if transport == "udp" else h.now
                elif first_provisional is None:
                    first_provisional = h.now
        # At most one report, at any point.
        assert len(rec.calls) <= 1

    h.advance_to(max(h.now, timer_f) + t4 + 1.0)
    assert len(rec.calls) == 1
    if final is not None:
        assert rec.calls == [final]
    else:
        assert rec.calls == [(timer_f, None)]
        assert h.layer.stats["client_timeouts"] == 1
    assert ct.key not in h.layer.client  # terminated in every case
    assert h.timers.next_deadline() is None

    times = h.send_times(ct)
    assert times[0] == start
    done_at = rec.calls[0][0]
    assert all(t <= done_at for t in times)  # nothing sent after the result
    if transport != "udp":
        assert times == [start]
        return
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(t1 - EPS <= g <= t2 + EPS for g in gaps), gaps
    # While Trying the back-off is exactly T1, 2T1, 4T1, ... capped at T2.
    expected, t, iv = [start], start + t1, t1
    # A Timer E due at the same instant as a delivered final response has
    # already fired (timers run first); one due with Timer F has not (F was
    # armed first and cancels it).
    def before_done(x: float) -> bool:
        return x <= done_at if final is not None else x < done_at

    while before_done(t) and (first_provisional is None or t <= first_provisional):
        expected.append(t)
        iv = min(iv * 2, t2)
        t += iv
    n = len(expected)
    assert [round(x, 6) for x in times[:n]] == [round(x, 6) for x in expected]
    if first_provisional is not None:
        # Proceeding: once the armed Timer E has fired, every T2.
        later = [x for x in times if x > first_provisional]
        assert all(abs((b - a) - t2) < 1e-6 for a, b in zip(later, later[1:]))


server_actions = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=20.0, allow_nan=False)),
        st.tuples(st.just("retransmit")),
        st.tuples(st.just("provisional")),
        st.tuples(st.just("final")),
    ),
    max_size=30,
)


@SETTINGS
@given(transports, server_actions)
def test_server_answers_retransmissions_by_state(transport, acts):
    h = Harness()
    src = Address(transport, "192.0.2.10", 5060, conn="c" if transport != "udp" else None)
    dest = Address(transport, "203.0.113.5", 5070, conn="c" if transport != "udp" else None)
    tx = h.layer.receive_request(request(), src)
    assert tx is not None
    provisional = final = None
    expires = None  # Timer J deadline once completed
    n_final = 0

    for i, act in enumerate(acts):
        kind = act[0]
        if kind == "advance":
            h.advance(act[1])
            continue
        if kind in ("provisional", "final"):
            body = f"SIP/2.0 {'180' if kind == 'provisional' else '200'} x{i}\r\n\r\n".encode()
            h.layer.respond(tx, body, dest, h.now, final=(kind == "final"))
            out = h.take()
            if final is None:
                assert out == [(body, dest, None)]
                if kind == "final":
                    final, n_final = body, n_final + 1
                    expires = h.now + 64 * 0.5  # Timer J on streams too (a resent request is not re-run)
                else:
                    provisional = body
            else:
                assert out == []  # nothing after the final response
            continue
        alive = expires is None or h.now < expires
        got = h.layer.receive_request(request(), src)
        out = h.take()
        if not alive:
            # Transaction over: the retransmission is a new request for the TU.
            assert got is not None and got is not tx
            assert out == []
            return
        assert got is None
        reply_to = src if src.reliable else dest
        if final is not None:
            assert out == [(final, reply_to, None)]
        elif provisional is not None:
            assert out == [(provisional, reply_to, None)]
        else:
            assert out == []
    assert n_final <= 1
