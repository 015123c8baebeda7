"""`serve --workers 2` over real sockets: one client, one source port, both workers.

Presentities are split between the workers by a hash, so 24 of them land on
both; the client cannot tell: every request is answered from its one UDP
port (or TCP connection), NOTIFYs carry the published state, the client's
200s to NOTIFYs reach the worker that sent them (no retransmissions), and the
management API lists what both workers hold.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request

import pytest

from e2e_support import Phone, Server, aor, pidf, sub_state, tuple_ids, uid
from sipclient import free_port

FORCE = ("--set", "presence_xml.force_active=1", "--set", "presence.min_expires=1")
N = 24


def _http_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc(port: int, method: str, *params):
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/RPC", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        out = json.loads(r.read())
    assert "error" not in out, out
    return out["result"]


def workers_of(srv: Server) -> list[int]:
    assert srv.proc is not None
    with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
        return [int(p) for p in f.read().split()]


def ready(srv: Server, timeout: float = 20.0) -> Server:
    """Wait until every worker listens (OPTIONS is answered as soon as one does)."""
    deadline = time.monotonic() + timeout
    while "workers ready" not in srv.output():
        assert time.monotonic() < deadline, srv.output()
        assert srv.alive(), srv.output()
        time.sleep(0.05)
    return srv


def owner(tag: str) -> int:
    assert tag.startswith("h") and tag[5] == ".", tag
    return int(tag[1:5], 16) % 2


@pytest.fixture(scope="module")
def two():
    http = _http_port()
    srv = ready(Server(*FORCE, "--workers", "2", "--http", f"127.0.0.1:{http}").start())
    srv.http = http
    yield srv
    srv.stop()


def _round_trip(srv: Server, transport: str) -> None:
    ph = Phone(srv.port, transport)
    try:
        names = [aor(uid("pw")) for _ in range(N)]
        for i, p in enumerate(names):
            assert ph.publish(p, pidf(p, tuple_id=f"t{i}")).status == 200
        dialogs = []
        for i, p in enumerate(names):
            r, d = ph.subscribe(p, expires=60)
            assert r.status == 200
            n = ph.expect_notify(d)
            assert tuple_ids(n.body) == [f"t{i}"], n.body
            dialogs.append(d)
        assert {owner(d.remote_tag) for d in dialogs} == {0, 1}  # both workers own some
        # PUBLISH after SUBSCRIBE notifies the watcher, whichever worker reads it
        for i, (p, d) in enumerate(zip(names, dialogs)):
            assert ph.publish(p, pidf(p, tuple_id=f"n{i}")).status == 200
            assert "n%d" % i in tuple_ids(ph.expect_notify(d).body)
        # in-dialog refresh, then un-SUBSCRIBE: the request reaches the dialog's owner
        for d in dialogs:
            r, _ = ph.subscribe(d.remote_uri, expires=60, dialog=d)
            assert r.status == 200
            assert sub_state(ph.expect_notify(d)).startswith("active")
        for d in dialogs:
            r, _ = ph.subscribe(d.remote_uri, expires=0, dialog=d)
            assert r.status == 200
            assert sub_state(ph.expect_notify(d)).startswith("terminated")
        # our 200s reached the workers that sent the NOTIFYs: nothing is retransmitted (T1 = 0.5 s)
        assert ph.no_message(1.2)
        assert ph.notify_retransmissions == 0
    finally:
        ph.close()


def test_udp_from_one_source_port(two):
    _round_trip(two, "udp")


def forwarded(http: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    line = next(l for l in text.splitlines() if l.startswith("presenced_worker_forwarded_total"))
    return float(line.split()[-1])


def test_kernel_steering_hands_each_datagram_to_its_owner(two):
    """The default udp_steering=kernel: PUBLISH, SUBSCRIBE, in-dialog SUBSCRIBE
    and the 200s to NOTIFYs, all from one source port, land in the owning
    worker's socket; nothing is forwarded. With udp_steering=shared about half is."""
    before = forwarded(two.http)
    _round_trip(two, "udp")
    assert forwarded(two.http) == before
    http = _http_port()
    shared = ready(Server(*FORCE, "--workers", "2", "--http", f"127.0.0.1:{http}",
                          "--set", "core.udp_steering=shared").start())
    try:
        _round_trip(shared, "udp")
        assert forwarded(http) > 10
    finally:
        shared.stop()


def test_workers_contact_names_the_presentity(two):
    ph = Phone(two.port, "udp")
    try:
        p = aor(uid("ct"))
        r, d = ph.subscribe(p, expires=60)
        assert r.status == 200
        user = p.split(":", 1)[1].split("@", 1)[0]
        assert r.get("contact").startswith(f"<sip:{user}@127.0.0.1:{two.port}"), r.get("contact")
        ph.expect_notify(d)
        r, _ = ph.subscribe(d.remote_uri, expires=0, dialog=d)
        assert r.status == 200
        ph.expect_notify(d)
    finally:
        ph.close()


def test_tcp_over_one_connection(two):
    _round_trip(two, "tcp")


def test_rpc_lists_both_workers(two):
    ph = Phone(two.port)
    names = [aor(uid("pr")) for _ in range(8)]
    for p in names:
        assert ph.publish(p, pidf(p)).status == 200
        r, d = ph.subscribe(p, expires=60)
        assert r.status == 200
        ph.expect_notify(d)
    rows = rpc(two.http, "presence.presentity_list")
    listed = {f"sip:{row['user']}@{row['domain']}" for row in rows}
    assert set(names) <= listed
    keys = [(f"{r['user']}@{r['domain']}", r["event"]) for r in rows]
    assert keys == sorted(keys)  # one list, in the order one process gives
    for p in names:  # each asked from worker 0, answered by the owner
        watchers = rpc(two.http, "presence.watcher_list", "basic", p)
        assert len(watchers) == 1
    counters = rpc(two.http, "presence.counters")
    assert counters["presence"]["subscriptions"]["presence"]["active"] >= len(names)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{two.http}/metrics", timeout=5).read().decode()
    assert "presenced_up 1\n" in metrics
    ph.close()


def test_killed_worker_is_restarted(spawn):
    srv = ready(spawn(*FORCE, "--workers", "2"))
    pids = workers_of(srv)
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = workers_of(srv)
        if len(now) == 2 and pids[1] not in now:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker not restarted:\n" + srv.output())
    assert "worker 1 died (killed by SIGKILL); restarting it" in srv.output()
    deadline = time.monotonic() + 10
    while srv.output().count("listening on") < 3:  # the new worker listens
        assert time.monotonic() < deadline, srv.output()
        time.sleep(0.05)
    ph = Phone(srv.port)
    for _ in range(8):  # presentities of both workers are answered again
        p = aor(uid("pk"))
        assert ph.publish(p, pidf(p)).status == 200
    ph.close()
    srv.proc.send_signal(signal.SIGHUP)  # forwarded: every worker reloads
    deadline = time.monotonic() + 5
    while srv.output().count("SIGHUP: reloaded") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.output().count("SIGHUP: reloaded") == 2
    pids = workers_of(srv)
    srv.sigterm()
    assert srv.proc.wait(15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_bad_worker_count_is_refused():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "presenced", "serve", "--workers", "65", "--db-url", "memory"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 2
    assert "core.workers" in r.stderr and "1..64" in r.stderr


def test_sqlite_write_through_restart_with_other_worker_count(tmp_path):
    db = f"sqlite://{tmp_path}/workers.db"
    port = free_port()
    first = ready(Server(*FORCE, "--workers", "2", "--db-url", db, port=port).start())
    ph = Phone(port)
    try:
        names = [aor(uid("pdb")) for _ in range(20)]
        dialogs = []
        for p in names:
            assert ph.publish(p, pidf(p, note="kept"), expires=300).status == 200
            r, d = ph.subscribe(p, expires=300)
            assert r.status == 200
            ph.expect_notify(d)
            dialogs.append(d)
        assert first.stop() == 0
        second = ready(Server(*FORCE, "--workers", "3", "--db-url", db, port=port).start())
        try:
            # every dialog is refreshed at its new owner (the tag carries the presentity's hash)
            for d in dialogs:
                r, _ = ph.subscribe(d.remote_uri, expires=300, dialog=d)
                assert r.status == 200, d.remote_uri
                assert b"kept" in ph.expect_notify(d).body
        finally:
            second.stop()
    finally:
        ph.close()


def test_a_worker_failing_at_start_up_stops_the_server(tmp_path):
    import subprocess
    import sys

    port = free_port()
    r = subprocess.run([sys.executable, "-m", "presenced", "serve", "--workers", "2",
                        "--listen", f"udp:127.0.0.1:{port}", "--db-url", f"sqlite://{tmp_path}/no/such/dir/x.db"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "failed at start-up" in r.stderr and "storage" in r.stderr


def test_db_only_mode_with_two_workers(tmp_path):
    """subs_db_mode=3 / publ_cache=0 (state reloaded from the database per request) still partitions."""
    srv = ready(Server(*FORCE, "--workers", "2", "--db-url", f"sqlite://{tmp_path}/dbonly.db",
                       "--set", "presence.subs_db_mode=3", "--set", "presence.publ_cache=0").start())
    ph = Phone(srv.port)
    try:
        for i in range(6):
            p = aor(uid("pq"))
            assert ph.publish(p, pidf(p, tuple_id=f"t{i}")).status == 200
            r, d = ph.subscribe(p, expires=60)
            assert r.status == 200
            assert tuple_ids(ph.expect_notify(d).body) == [f"t{i}"]
            assert ph.publish(p, pidf(p, tuple_id=f"n{i}")).status == 200
            assert f"n{i}" in tuple_ids(ph.expect_notify(d).body)
            r, _ = ph.subscribe(p, expires=0, dialog=d)
            assert r.status == 200
            assert sub_state(ph.expect_notify(d)).startswith("terminated")
    finally:
        ph.close()
        srv.stop()


def test_write_back_crash_under_another_worker_count_still_skips_cseqs(tmp_path):
    """Each worker count keeps its own clean-stop markers: a crash of a
    one-worker run between two clean two-worker runs must not be hidden by
    the two-worker markers of the first run (NOTIFY CSeqs would be reused)."""
    import os
    import signal

    db = f"sqlite://{tmp_path}/wb.db"
    port = free_port()
    wb = ("--set", "presence.subs_db_mode=2", "--set", "presence.db_update_period=100")
    ph = Phone(port)
    try:
        first = ready(Server(*FORCE, *wb, "--workers", "2", "--db-url", db, port=port).start())
        dialogs = []
        for _ in range(6):
            p = aor(uid("wb"))
            r, d = ph.subscribe(p, expires=300)
            assert r.status == 200
            ph.expect_notify(d)
            dialogs.append(d)
        assert first.stop() == 0  # clean: the two-worker markers say so
        one = Server(*FORCE, *wb, "--workers", "1", "--db-url", db, port=port).start()
        last = {}
        for d in dialogs:
            assert ph.subscribe(d.remote_uri, expires=300, dialog=d)[0].status == 200
            last[d.call_id] = ph.expect_notify(d).cseq.seq
            assert last[d.call_id] == 2  # after a clean stop the CSeqs simply continue
        os.kill(one.proc.pid, signal.SIGKILL)  # nothing of the refreshes reached the database
        one.proc.wait(5)
        again = ready(Server(*FORCE, *wb, "--workers", "2", "--db-url", db, port=port).start())
        try:
            for d in dialogs:
                assert ph.subscribe(d.remote_uri, expires=300, dialog=d)[0].status == 200
                seq = ph.expect_notify(d).cseq.seq
                assert seq > last[d.call_id], (seq, last[d.call_id])
        finally:
            again.stop()
    finally:
        ph.close()
