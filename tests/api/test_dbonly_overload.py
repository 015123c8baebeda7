"""DB-only modes under overload: when the database cannot serve requests in
time, the excess is answered 503 with Retry-After at once instead of queueing
for longer than the sender waits (a black-box SIPp run saw goodput collapse to
a third of capacity, every answer late, at 2.5x overload)."""

from __future__ import annotations

import asyncio
import time

from api_support import HOST, LiveServer, pidf, uid
from sipclient import SipClient

FETCH_DELAY = 0.1  # seconds the database takes per request, one request at a time


def _slow_database(srv: LiveServer) -> None:
    shared = srv.server.shared
    real = shared.fetch
    lock = asyncio.Lock()

    async def slow_fetch(req):
        async with lock:
            await asyncio.sleep(FETCH_DELAY)
        return await real(req)

    srv.in_loop(setattr, shared, "fetch", slow_fetch)


def test_excess_requests_get_503_with_retry_after_not_a_late_answer(tmp_path):
    srv = LiveServer(db_url=f"sqlite://{tmp_path}/db-only.db", **{"presence.subs_db_mode": 3,
                                                                    "presence.publ_cache": 0}).start()
    try:
        _slow_database(srv)
        with SipClient(srv.port, user="pub") as client:
            first = f"sip:{uid('p')}@{HOST}"
            r = client.request("PUBLISH", first, [("Event", "presence"), ("Expires", "600"),
                                                  ("Content-Type", "application/pidf+xml")],
                               pidf(first), from_uri=first, timeout=5)
            assert r.status == 200  # the server now knows what a request costs
            n = 60
            t0 = time.monotonic()
            for _ in range(n):
                p = f"sip:{uid('b')}@{HOST}"
                data, _ = client.build("PUBLISH", p, [("Event", "presence"), ("Expires", "600"),
                                                     ("Content-Type", "application/pidf+xml")],
                                       pidf(p), from_uri=p)
                client.send_raw(data)
            answers = [client.recv(8.0, lambda m: getattr(m, "status", 0) >= 200) for _ in range(n)]
            took = time.monotonic() - t0
        codes = [a.status for a in answers]
        assert set(codes) <= {200, 503}, codes
        refused = [a for a in answers if a.status == 503]
        # ~2 s of work is admitted (SYNC_ADMIT); the rest is refused at once
        assert len(refused) >= n // 2, codes
        assert codes.count(200) >= 10, codes
        assert all(a.get("retry-after") and a.get("retry-after").isdigit() for a in refused)
        assert took < 4.0, took  # nobody waited past what the admitted work costs
        metrics = srv.in_loop(lambda: srv.server.core.stats.get("overloaded", 0))
        assert metrics == len(refused)
    finally:
        srv.stop()
