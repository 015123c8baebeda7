"""DB-only mode (subs_db_mode=3, publ_cache=0): two server processes, one database.

Whatever process a request reaches, it acts on the state the other one wrote:
a PUBLISH at B reaches a watcher that subscribed at A, an ETag issued by B is
refreshed at A, a dialog created at A is refreshed and ended at B with CSeqs
still increasing, and a subscription refreshed at B is not expired by A's
timer for its old expiry.
"""

from __future__ import annotations

import time

from persist_support import HOST, UA, aor, pidf, uid

DB_ONLY = ("--set", "presence.subs_db_mode=3", "--set", "presence.publ_cache=0",
           "--set", "presence_xml.force_active=1", "--log-level", "info")


def _to(ua: UA, srv) -> UA:
    ua.server = (HOST, srv.port)
    return ua


def _two_processes(servers, database):
    return servers.start(*DB_ONLY, db=database), servers.start(*DB_ONLY, db=database)


def _state(n) -> str:
    return (n.get("subscription-state") or "").split(";")[0].strip()


def test_two_processes_share_publications_and_dialogs(database, servers, uas):
    a, b = _two_processes(servers, database)
    pres = aor(uid("alice"))
    pub = uas(a.port, "alice")
    w = uas(a.port, "bob")

    # Subscribe at A: nothing published yet.
    r, dlg = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    n = w.expect_notify(dlg)
    cseq = n.cseq.seq

    # Publish at B: B finds A's watcher in the database and NOTIFYs it.
    r = _to(pub, b).publish(pres, pidf(pres, "from-b"), expires=600)
    assert r.status == 200, r
    etag = r.sip_etag
    n = w.expect_notify(dlg)
    assert b"from-b" in n.body
    assert n.cseq.seq > cseq
    cseq = n.cseq.seq

    # Modify at A with B's ETag: A finds the publication in the database.
    r = _to(pub, a).publish(pres, pidf(pres, "from-a"), etag=etag, expires=600)
    assert r.status == 200, r
    assert r.sip_etag and r.sip_etag != etag
    etag = r.sip_etag
    n = w.expect_notify(dlg)
    assert b"from-a" in n.body and b"from-b" not in n.body
    assert n.cseq.seq > cseq
    cseq = n.cseq.seq

    # The old ETag is gone for both.
    assert _to(pub, b).publish(pres, etag="a-stale-etag", expires=600).status == 412

    # Refresh A's dialog at B: accepted, and B's NOTIFY continues A's CSeqs.
    r, dlg = _to(w, b).subscribe(pres, "presence", expires=600, dialog=dlg)
    assert r.status == 200, r
    n = w.expect_notify(dlg)
    assert b"from-a" in n.body
    assert n.cseq.seq > cseq
    cseq = n.cseq.seq

    # Unsubscribe at A (the refresh happened at B): terminated, and gone for B too.
    r, dlg = _to(w, a).subscribe(pres, "presence", expires=0, dialog=dlg)
    assert r.status == 200, r
    n = w.expect_notify(dlg)
    assert _state(n) == "terminated"
    assert n.cseq.seq > cseq
    r, _ = _to(w, b).subscribe(pres, "presence", expires=600, dialog=dlg)
    assert r.status == 481, r
    assert database.count("active_watchers", "callid = ?", (dlg.call_id,)) == 0

    # Remove the publication at B: its row goes.
    r = _to(pub, b).publish(pres, etag=etag, expires=0)
    assert r.status == 200, r
    assert database.count("presentity", "etag = ?", (etag,)) == 0


def test_refresh_elsewhere_is_not_expired_by_the_old_timer(database, servers, uas):
    a, b = _two_processes(servers, database)
    pres = aor(uid("carol"))
    w = uas(a.port, "dave")

    r, dlg = w.subscribe(pres, "presence", expires=2)
    assert r.status == 200, r
    w.expect_notify(dlg)
    # Refreshed at B for 10 minutes: A's timer (2 s) must ask the DB and stand down.
    r, dlg = _to(w, b).subscribe(pres, "presence", expires=600, dialog=dlg)
    assert r.status == 200, r
    w.expect_notify(dlg)
    assert w.notifies(dlg, window=3.5) == []
    assert database.count("active_watchers", "callid = ?", (dlg.call_id,)) == 1

    # And a subscription that really runs out is ended by the process holding it.
    r, d2 = _to(w, b).subscribe(pres, "presence", expires=1)
    assert r.status == 200, r
    w.expect_notify(d2)
    n = w.expect_notify(d2, timeout=4)
    assert _state(n) == "terminated"
    deadline = time.monotonic() + 3
    while database.count("active_watchers", "callid = ?", (d2.call_id,)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert database.count("active_watchers", "callid = ?", (d2.call_id,)) == 0


def test_publication_refreshed_elsewhere_survives_its_old_expiry(database, servers, uas):
    a, b = _two_processes(servers, database)
    pres = aor(uid("erin"))
    pub = uas(a.port, "erin")
    w = uas(b.port, "frank")

    r = pub.publish(pres, pidf(pres, "short"), expires=2)
    assert r.status == 200, r
    # Refreshed at B: new ETag, 10 minutes. A's 2 s timer must not end it.
    r = _to(pub, b).publish(pres, etag=r.sip_etag, expires=600)
    assert r.status == 200, r
    time.sleep(3)
    r, dlg = _to(w, a).subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    n = w.expect_notify(dlg)
    assert b"short" in n.body
    user = pres.split(":")[1].split("@")[0]
    assert database.count("presentity", "username = ?", (user,)) == 1


def test_retransmissions_are_absorbed_not_run_twice(database, servers, uas):
    """A retransmission that arrives while the original waits for its reload, or
    after it ran, gets the original's answer: one publication, one ETag."""
    a = servers.start(*DB_ONLY, db=database)
    pres = aor(uid("ivy"))
    pub = uas(a.port, "ivy")
    body = pidf(pres, "once")
    data, branch = pub.build("PUBLISH", pres, [("Event", "presence"), ("Expires", "600"),
                                               ("Content-Type", "application/pidf+xml")], body)
    for _ in range(3):
        pub.send_raw(data)
    first = pub.wait_response(branch)
    assert first.status == 200, first
    pub.send_raw(data)
    again = pub.wait_response(branch)
    assert again.sip_etag == first.sip_etag
    user = pres.split(":")[1].split("@")[0]
    assert database.count("presentity", "username = ?", (user,)) == 1


ALLOW_BOB = """<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns="urn:ietf:params:xml:ns:pres-rules" xmlns:cr="urn:ietf:params:xml:ns:common-policy">
  <cr:rule id="friends">
    <cr:conditions><cr:identity><cr:one id="sip:{watcher}@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>allow</sub-handling></cr:actions>
    <cr:transformations><provide-services><all-services/></provide-services></cr:transformations>
  </cr:rule>
</cr:ruleset>
"""


def test_update_watchers_at_one_process_reaches_a_watcher_of_the_other(database, servers, uas):
    """The owner's rules change is applied through B's management API; the watcher
    subscribed (pending) through A. B must find it in the database and NOTIFY it."""
    import json
    import urllib.request

    from persist_support import free_port
    from presenced.storage.rows import XcapRow

    rules_only = [x for x in DB_ONLY if x != "presence_xml.force_active=1"][:-3] + ["--log-level", "info"]
    http = free_port()
    a = servers.start(*rules_only, db=database)
    b = servers.start(*rules_only, "--http", f"{HOST}:{http}", db=database)
    owner, watcher = uid("kim"), uid("lee")
    pres = aor(owner)
    w = uas(a.port, watcher)
    assert uas(b.port, owner).publish(pres, pidf(pres, "visible"), expires=600).status == 200

    r, dlg = w.subscribe(pres, "presence", expires=600)
    assert r.status in (200, 202), r
    assert _state(w.expect_notify(dlg)) == "pending"

    doc = ALLOW_BOB.format(watcher=watcher).encode()
    row = XcapRow(username=owner, domain=HOST, doc=doc, doc_type=2, etag="r1", source=1,
                  doc_uri=f"/pres-rules/users/{pres}/index", port=0)
    database.run(lambda store: store.put_xcap(row))
    req = urllib.request.Request(f"http://{HOST}:{http}/RPC", method="POST", data=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "presence.updateWatchers", "params": [pres, "presence"]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        result = json.loads(resp.read())
    assert result.get("result") == {"changed": 1}, result
    n = w.expect_notify(dlg)
    assert _state(n) == "active"
    assert b"<basic>open</basic>" in n.body  # the PIDF, filtered by the rule

    # A's cached rules are not stale: a new dialog from the same watcher is active at once.
    r, d2 = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    assert _state(w.expect_notify(d2)) == "active"
