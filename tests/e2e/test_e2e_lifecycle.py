"""Process lifecycle: signals, version, configuration errors."""

from __future__ import annotations

import subprocess
import time

from e2e_support import HOST, Phone, SipClient, cli, pidf, uid

import presenced


def test_sigterm_exits_0_promptly(spawn):
    srv = spawn("--set", "presence_xml.force_active=1")
    uri = f"sip:{uid('p')}@{HOST}"
    with Phone(srv.port, "udp") as w, Phone(srv.port, "tcp") as p:
        _, d = w.subscribe(uri, expires=600)
        w.expect_notify(d)
        assert p.publish(uri, pidf(uri)).status == 200
        w.expect_notify(d)
        t0 = time.monotonic()
        srv.sigterm()
        try:
            rc = srv.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError("server did not exit within 5 s of SIGTERM")
    assert rc == 0, srv.output()
    assert time.monotonic() - t0 < 5


def test_sigterm_idle_server(spawn):
    srv = spawn()
    srv.sigterm()
    assert srv.proc.wait(timeout=5) == 0


def test_version():
    r = cli("--version")
    assert r.returncode == 0
    assert presenced.__version__ in r.stdout


def test_bad_integer_parameter_exits_2_with_one_line():
    r = cli("serve", "--db-url", "memory", "--set", "presence.min_expires=abc")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert "presence.min_expires" in lines[0]


def test_unknown_parameter_exits_2():
    r = cli("serve", "--db-url", "memory", "--set", "presence.no_such_param=1")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "presence.no_such_param" in lines[0], r.stderr


def test_unknown_section_exits_2():
    r = cli("serve", "--db-url", "memory", "--set", "nosuch.param=1")
    assert r.returncode == 2
    assert "nosuch" in r.stderr


def test_port_in_use_exits_2(server):
    """A second server on the shared server's port cannot listen: exit 2, not a traceback."""
    r = cli("serve", "--db-url", "memory", "--listen", f"udp:{HOST}:{server.port}",
            "--listen", f"tcp:{HOST}:{server.port}", timeout=20)
    assert r.returncode == 2, r.stderr[-500:]
    assert "Traceback" not in r.stderr


def test_udp_port_in_use_exits_2(server):
    """A second server must not quietly share the UDP port (and half the traffic)."""
    r = cli("serve", "--db-url", "memory", "--listen", f"udp:{HOST}:{server.port}", timeout=20)
    assert r.returncode == 2, r.stderr[-500:]
    assert "Traceback" not in r.stderr
    with Phone(server.port, "udp") as ph:
        assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


def test_sigterm_stops_taking_requests_and_finishes_notify_in_flight(spawn, tmp_path):
    """SIGTERM: new requests get no answer, the NOTIFY in flight still completes
    (retransmitted until answered), then the process exits 0 at once.
    (Subscriptions stored in SQLite: they outlive the stop, no deactivation.)"""
    srv = spawn("--set", "presence_xml.force_active=1", "--set", "core.shutdown_grace_ms=5000",
                "--db-url", f"sqlite://{tmp_path}/stop.db")
    uri = f"sip:{uid('p')}@{HOST}"
    w = SipClient(srv.port, user=uid("w"))  # answers NOTIFYs only when told to
    p = Phone(srv.port, "udp")
    late = Phone(srv.port, "udp")
    try:
        _, d = w.subscribe(uri, expires=600)
        w.expect_notify(d)
        assert p.publish(uri, pidf(uri, note="last words")).status == 200
        is_notify = lambda m: getattr(m, "method", None) == "NOTIFY"  # noqa: E731
        first = w.recv(2.0, is_notify)  # not answered: the transaction stays in flight
        assert b"last words" in first.body
        srv.sigterm()
        time.sleep(0.1)
        # no new work is taken on
        resp = None
        try:
            resp = late.request("OPTIONS", f"sip:{HOST}:{srv.port}", timeout=0.4)
        except TimeoutError:
            pass
        assert resp is None, f"answered {resp.status} after SIGTERM"
        # ... but the NOTIFY in flight is retransmitted (Timer E) until answered
        again = w.recv(2.0, is_notify)
        assert again.get("cseq") == first.get("cseq") and again.top_via.branch == first.top_via.branch
        assert srv.alive()
        w.answer(again, 200)
        t_answer = time.monotonic()
        try:
            rc = srv.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            raise AssertionError("server did not exit after its last transaction finished")
        assert rc == 0, srv.output()
        assert time.monotonic() - t_answer < 1.0
    finally:
        for c in (w, p, late):
            c.close()


def test_stop_in_memory_mode_tells_watchers_their_subscriptions_end(spawn, tmp_path):
    """Memory only: the subscriptions die with the process, so each watcher gets
    terminated;reason=deactivated and may subscribe again at once (RFC 6665
    §4.2.2) rather than hear nothing until its refresh gets 481. With
    subscriptions in a database nothing is sent: they survive the restart."""
    srv = spawn("--set", "presence_xml.force_active=1")
    uri = f"sip:{uid('p')}@{HOST}"
    w = Phone(srv.port, "udp")
    try:
        _, d = w.subscribe(uri, expires=600)
        w.expect_notify(d)
        srv.sigterm()
        n = w.expect_notify(d, timeout=3)
        assert n.get("subscription-state") == "terminated;reason=deactivated"
        assert srv.proc.wait(timeout=5) == 0
    finally:
        w.close()
    kept = spawn("--set", "presence_xml.force_active=1", "--db-url", f"sqlite://{tmp_path}/kept.db")
    w = Phone(kept.port, "udp")
    try:
        _, d = w.subscribe(uri, expires=600)
        w.expect_notify(d)
        kept.sigterm()
        assert w.no_notify(d, 0.5)
    finally:
        w.close()


def test_shutdown_grace_bounds_the_wait_for_unanswered_notifies(spawn):
    """core.shutdown_grace_ms: a NOTIFY nobody answers keeps a stopping server
    up for that long, not longer (and not for the default 2 s)."""
    srv = spawn("--set", "presence_xml.force_active=1", "--set", "core.shutdown_grace_ms=600")
    uri = f"sip:{uid('p')}@{HOST}"
    w = SipClient(srv.port, user=uid("w"))  # never answers the NOTIFY below
    p = Phone(srv.port, "udp")
    try:
        _, d = w.subscribe(uri, expires=600)
        w.expect_notify(d)
        assert p.publish(uri, pidf(uri, note="unanswered")).status == 200
        assert b"unanswered" in w.recv(2.0, lambda m: getattr(m, "method", None) == "NOTIFY").body
        t0 = time.monotonic()
        srv.sigterm()
        rc = srv.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        assert rc == 0, srv.output()
        assert 0.55 <= elapsed < 1.8, elapsed
    finally:
        w.close()
        p.close()


def test_config_errors_name_file_line_and_field(tmp_path):
    conf = tmp_path / "presenced.toml"
    conf.write_text("[presence]\nmax_expires = 600\n\nsubs_db_mode = 7\n")
    for args in (("config", "check", str(conf)), ("serve", "--config", str(conf), "--db-url", "memory")):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert lines == [f"presenced: {conf}:4: presence.subs_db_mode: 7 is out of range 0..3"], (args, r.stderr)
    conf.write_text("[presence]\nmax_expires = 600\n")
    r = cli("config", "check", str(conf))
    assert r.returncode == 0 and f"{conf}: OK" in r.stdout


def test_a_second_server_on_the_same_sqlite_file_is_warned_about(spawn, tmp_path):
    """Two servers that keep state in memory (write-back here) overwrite each
    other's rows in one SQLite file: the second says so at start. DB-only
    servers may share a file and are not warned about."""
    db = f"sqlite://{tmp_path}/shared.db"
    first = spawn("--db-url", db)
    second = spawn("--db-url", db)
    assert "another presenced process is using" not in first.output()
    assert "another presenced process is using" in second.output()
    assert "shared.db" in second.output()
    db_only = ("--set", "presence.subs_db_mode=3", "--set", "presence.publ_cache=0")
    other = f"sqlite://{tmp_path}/dbonly.db"
    a, b = spawn("--db-url", other, *db_only), spawn("--db-url", other, *db_only)
    assert "another presenced process" not in a.output() + b.output()
    # the lock goes with the process: a restart after a stop is not warned about
    first.stop()
    second.stop()
    third = spawn("--db-url", db)
    assert "another presenced process" not in third.output()
