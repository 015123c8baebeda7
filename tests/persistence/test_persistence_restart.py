"""Restart without loss: real server processes, killed and restarted on the same port and DB.

- write-through (subs_db_mode=1, publ_cache=1): kill -9, then every publication
  (and its ETag) and every subscription is back;
- write-back (subs_db_mode=2): the same after SIGTERM (flushed on the way out);
- memory only (publ_cache=2, subs_db_mode=0): nothing survives, by design.

After a restart the existing dialogs keep working: in-dialog refreshes get
200, NOTIFY CSeqs and dialog-info body versions keep increasing, and a new
PUBLISH reaches the restored subscriptions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from persist_support import UA, Dialog, aor, body_version, dialog_info, pidf, sub_state, uid

DIALOG_CT = "application/dialog-info+xml"
COMMON = ("--set", "presence_xml.force_active=1", "--log-level", "info")


@dataclass
class Before:
    pres: str
    pub: UA
    watcher: UA
    etag: str          # presence publication
    dialog_etag: str   # dialog publication
    presence_dlg: Dialog
    dialog_dlg: Dialog
    presence_cseq: int
    dialog_cseq: int
    dialog_version: int


def _setup(srv, uas) -> Before:
    pres = aor(uid("alice"))
    pub = uas(srv.port, "alice")
    w = uas(srv.port, "bob")

    r = pub.publish(pres, pidf(pres, "before"), expires=600)
    assert r.status == 200, r
    etag = r.sip_etag
    r = pub.publish(pres, dialog_info(pres, "early"), event="dialog", ctype=DIALOG_CT, expires=600)
    assert r.status == 200, r
    detag = r.sip_etag

    r, dp = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    n = w.expect_notify(dp)
    assert b"before" in n.body
    p_cseq = n.cseq.seq

    r, dd = w.subscribe(pres, "dialog", expires=600, extra=[("Accept", DIALOG_CT)])
    assert r.status == 200, r
    n = w.expect_notify(dd)
    d_cseq, d_ver = n.cseq.seq, body_version(n.body)

    # A PUBLISH-triggered NOTIFY: its CSeq and version must be stored too.
    r = pub.publish(pres, dialog_info(pres, "confirmed"), event="dialog", ctype=DIALOG_CT, etag=detag, expires=600)
    assert r.status == 200, r
    detag = r.sip_etag
    n = w.expect_notify(dd)
    assert b"confirmed" in n.body
    assert n.cseq.seq > d_cseq and body_version(n.body) > d_ver
    d_cseq, d_ver = n.cseq.seq, body_version(n.body)
    assert w.notifies(window=0.2) == []
    return Before(pres, pub, w, etag, detag, dp, dd, p_cseq, d_cseq, d_ver)


def _check_restored(b: Before) -> None:
    pub, w = b.pub, b.watcher

    # The publications and their ETags are back.
    r = pub.publish(b.pres, etag=b.etag, expires=600)
    assert r.status == 200, r
    assert r.sip_etag and r.sip_etag != b.etag
    r = pub.publish(b.pres, dialog_info(b.pres, "terminated"), event="dialog", ctype=DIALOG_CT,
                    etag=b.dialog_etag, expires=600)
    assert r.status == 200, r
    # the modify notifies the restored dialog subscription
    n = w.expect_notify(b.dialog_dlg)
    assert b"terminated" in n.body
    assert n.cseq.seq > b.dialog_cseq
    assert body_version(n.body) > b.dialog_version
    d_cseq, d_ver = n.cseq.seq, body_version(n.body)
    w.notifies(window=0.3)  # the presence refresh may have notified too

    # In-dialog refreshes are accepted; the NOTIFY continues the dialog's CSeq.
    r, _ = w.subscribe(b.pres, "presence", expires=600, dialog=b.presence_dlg)
    assert r.status == 200, r
    n = w.expect_notify(b.presence_dlg)
    assert n.cseq.seq > b.presence_cseq
    assert sub_state(n).startswith("active")
    assert b"before" in n.body
    p_cseq = n.cseq.seq

    r, _ = w.subscribe(b.pres, "dialog", expires=600, dialog=b.dialog_dlg, extra=[("Accept", DIALOG_CT)])
    assert r.status == 200, r
    n = w.expect_notify(b.dialog_dlg)
    assert n.cseq.seq > d_cseq
    assert body_version(n.body) > d_ver

    # A new publication reaches the restored presence subscription.
    other = UA(pub.server[1], user="alice2")
    try:
        r = other.publish(b.pres, pidf(b.pres, "after-restart", tuple_id="t2"), expires=600)
        assert r.status == 200, r
    finally:
        other.close()
    n = w.expect_notify(b.presence_dlg)
    assert b"after-restart" in n.body and b"before" in n.body
    assert n.cseq.seq > p_cseq


def _rows(db, b: Before) -> tuple[int, int]:
    user = b.pres.split(":", 1)[1].split("@")[0]
    return (
        db.count("presentity", "username = ?", (user,)),
        db.count("active_watchers", "presentity_uri = ?", (b.pres,)),
    )


@pytest.mark.parametrize("subs_db_mode,publ_cache", [(1, 1), (3, 0)], ids=["subs1-publ1", "subs3-publ0"])
def test_write_through_survives_kill9(subs_db_mode, publ_cache, database, servers, uas):
    srv = servers.start("--set", f"presence.subs_db_mode={subs_db_mode}", "--set", f"presence.publ_cache={publ_cache}",
                        *COMMON, db=database)
    b = _setup(srv, uas)
    assert _rows(database, b) == (2, 2)  # committed before the replies left
    srv.kill9()

    srv2 = servers.restart(srv)
    assert "restored 2 publications and 2 subscriptions" in srv2.output()
    _check_restored(b)


def test_write_back_survives_sigterm(database, servers, uas):
    srv = servers.start("--set", "presence.subs_db_mode=2", "--set", "presence.db_update_period=100", *COMMON, db=database)
    b = _setup(srv, uas)
    # Subscription changes are not written until the flush (db_update_period
    # is 100 s away): SIGTERM must write them.
    late = uas(srv.port, "carol")
    r, late_dlg = late.subscribe(b.pres, "presence", expires=600)
    assert r.status == 200
    late_cseq = late.expect_notify(late_dlg).cseq.seq
    # publications are written through; no subscription row yet (write-back:
    # the PUBLISHes' commits do not carry them)
    assert _rows(database, b) == (2, 0)
    assert srv.sigterm() == 0
    assert _rows(database, b) == (2, 3)

    srv2 = servers.restart(srv)
    assert "restored 2 publications and 3 subscriptions" in srv2.output()
    _check_restored(b)
    seen = late.notifies(window=0.3)
    r, _ = late.subscribe(b.pres, "presence", expires=600, dialog=late_dlg)
    assert r.status == 200, r
    seen.append(late.expect_notify(late_dlg))
    # The stop was clean, so nothing was skipped: CSeqs continue one by one.
    assert [n.cseq.seq for n in seen] == list(range(late_cseq + 1, late_cseq + 1 + len(seen)))


def test_write_back_after_kill9_skips_past_lost_cseqs(database, servers, uas):
    """A crash may lose one db_update_period of CSeq updates: the restart jumps past them."""
    srv = servers.start("--set", "presence.subs_db_mode=2", "--set", "presence.db_update_period=1", *COMMON, db=database)
    pres = aor(uid("gina"))
    w = uas(srv.port, "hank")
    r, dlg = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    cseq = w.expect_notify(dlg).cseq.seq
    deadline = time.monotonic() + 5
    while database.count("active_watchers", "callid = ?", (dlg.call_id,)) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    srv.kill9()

    servers.restart(srv)
    r, _ = w.subscribe(pres, "presence", expires=600, dialog=dlg)
    assert r.status == 200, r
    assert w.expect_notify(dlg).cseq.seq >= cseq + 100


def test_write_back_kill9_after_many_notifies_never_reuses_a_cseq(database, servers, uas):
    """A dialog that sent more NOTIFYs since its row was written than a restart
    skips: its row is written early (every journal.HURRY_AFTER NOTIFYs), so
    after a crash the CSeqs still go up. Before, a watcher that had seen
    CSeq 151 got 102 again after the restart; with the default period of
    100 s the row of a new dialog was not written at all (481)."""
    srv = servers.start("--set", "presence.subs_db_mode=2", "--set", "presence.db_update_period=100", *COMMON,
                        db=database)
    pres = aor(uid("ivan"))
    w = uas(srv.port, "judy")
    pub = uas(srv.port, "ivan")
    r, dlg = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    w.expect_notify(dlg)
    etag = None
    for i in range(150):
        r = pub.publish(pres, pidf(pres, f"n{i}"), etag=etag, expires=600)
        assert r.status == 200, r
        etag = r.get("SIP-ETag")
    last = max(n.cseq.seq for n in w.notifies(dlg, window=1.0))
    assert last >= 150
    time.sleep(0.5)  # the early write of the last HURRY_AFTER batch
    srv.kill9()

    servers.restart(srv)
    r, _ = w.subscribe(pres, "presence", expires=600, dialog=dlg)
    assert r.status == 200, r
    assert w.expect_notify(dlg).cseq.seq > last


def test_a_publication_that_expired_while_down_is_notified_after_restart(database, servers, uas):
    """Its expiry timer died with the process; the watchers' last NOTIFY still
    showed it, and nothing told them otherwise for the rest of their
    subscription."""
    _expired_while_down(database, servers, uas, "presence.subs_db_mode=1")


def test_a_publication_that_expired_while_down_is_notified_after_restart_db_only(tmp_path, servers, uas):
    from persist_support import Database

    db = Database.open("sqlite", tmp_path)
    _expired_while_down(db, servers, uas, "presence.subs_db_mode=3", "presence.publ_cache=0")


def _expired_while_down(database, servers, uas, *mode: str) -> None:
    sets = [a for m in mode for a in ("--set", m)]
    srv = servers.start(*sets, "--set", "presence.min_expires=1", *COMMON, db=database)
    pres = aor(uid("kim"))
    pub, w = uas(srv.port, "kim"), uas(srv.port, "lou")
    assert pub.publish(pres, pidf(pres, "short-lived"), expires=2).status == 200
    r, dlg = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    assert b"short-lived" in w.expect_notify(dlg).body
    srv.kill9()
    time.sleep(2.2)

    srv = servers.restart(srv)
    n = w.expect_notify(dlg, timeout=5)
    assert sub_state(n).startswith("active")
    assert b"short-lived" not in n.body
    # told once: the expired rows are gone, the next restart has nothing to tell
    assert srv.sigterm() == 0
    servers.restart(srv)
    assert w.notifies(dlg, window=1.0) == []


def test_memory_only_modes_keep_nothing(tmp_path, servers, uas):
    """publ_cache=2 + subs_db_mode=0 (documented memory-only): a restart starts empty."""
    from persist_support import Database

    db = Database.open("sqlite", tmp_path)
    srv = servers.start("--set", "presence.subs_db_mode=0", "--set", "presence.publ_cache=2", *COMMON, db=db)
    b = _setup(srv, uas)
    assert srv.sigterm() == 0
    assert _rows(db, b) == (0, 0)
    # the subscriptions die with the process: each watcher was told (RFC 6665 deactivated)
    ended = b.watcher.notifies(window=0.5)
    assert len(ended) == 2, ended
    assert {n.get("subscription-state") for n in ended} == {"terminated;reason=deactivated"}

    servers.restart(srv)
    assert b.pub.publish(b.pres, etag=b.etag, expires=600).status == 412
    r, _ = b.watcher.subscribe(b.pres, "presence", expires=600, dialog=b.presence_dlg)
    assert r.status == 481
    assert b.watcher.notifies(window=0.3) == []
