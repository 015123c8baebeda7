"""clean_period: expired rows disappear from the tables, whoever wrote them.

subs_db_mode=2 (write-back, db_update_period far away) so that an expired
subscription's row is only removed by the cleaner; publications expire in
memory and are deleted write-through (publ_cache=1), and rows of expired
publications/subscriptions left by another writer (Kamailio, an earlier
process) are swept as well. Hard-state rows (expires = -1) stay.
"""

from __future__ import annotations

import json
import time
import urllib.request

from persist_support import HOST, Database, aor, pidf, uid
from sipclient import free_port


def wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_clean_period_purges_expired_rows(tmp_path, servers, uas):
    db = Database.open("sqlite", tmp_path)
    http = free_port()
    srv = servers.start(
        "--set", "presence.clean_period=1", "--set", "presence.subs_db_mode=2",
        "--set", "presence.db_update_period=100", "--set", "presence.min_expires=1",
        "--set", "presence_xml.force_active=1", "--http", f"{HOST}:{http}", db=db,
    )
    now = int(time.time())
    stale, hard = uid("stale"), uid("hard")
    stale_callid = uid("stale") + "@elsewhere"
    p = ("INSERT INTO {presentity} (username, domain, event, etag, expires, received_time, body, sender, priority, ruid)"
         " VALUES (?, '127.0.0.1', 'presence', ?, ?, ?, ?, '', 0, ?)")

    async def insert(store):
        from presenced.storage import schema

        await store._run([
            (schema._ph(store.dialect, p.format(**store.names)),
             (stale, "a.1.2.3.0", now - 10, now - 100, pidf(aor(stale), "old"), "r-" + stale), False),
            (schema._ph(store.dialect, p.format(**store.names)),
             (hard, "hard-state-etag", -1, now - 100, pidf(aor(hard), "hard"), "r-" + hard), False),
            (schema._ph(store.dialect, (
                "INSERT INTO {active_watchers} (presentity_uri, watcher_username, watcher_domain, to_user, to_domain,"
                " event, event_id, to_tag, from_tag, callid, local_cseq, remote_cseq, contact, record_route, expires,"
                " status, reason, version, socket_info, local_contact, from_user, from_domain, updated,"
                " updated_winfo, flags, user_agent) VALUES (?, 'w', '127.0.0.1', ?, '127.0.0.1', 'presence', NULL,"
                " 'tt', 'ft', ?, 2, 1, 'sip:w@127.0.0.1:9', NULL, ?, 1, '', 1, 'udp:127.0.0.1:5060',"
                " 'sip:127.0.0.1:5060', 'w', '127.0.0.1', -1, -1, 0, '')").format(**store.names)),
             (aor(stale), stale, stale_callid, now - 10), False),
        ])

    db.run(insert)

    short, long_ = uid("short"), uid("long")
    w = uas(srv.port, "watcher")
    r, short_dlg = w.subscribe(aor(short), expires=3)  # outlives the publication: only the cleaner removes it
    assert r.status == 200
    r, long_dlg = w.subscribe(aor(long_), expires=600)
    assert r.status == 200
    ua = uas(srv.port, "alice")
    assert ua.publish(aor(short), pidf(aor(short), "s"), expires=2).status == 200
    assert ua.publish(aor(long_), pidf(aor(long_), "l"), expires=600).status == 200
    # write-back: the subscriptions reach the table with the next flush (the
    # PUBLISHes' commits carry only publications); this RPC flushes first
    req = urllib.request.Request(f"http://{HOST}:{http}/RPC", method="POST", data=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "presence.publish_cache_sync", "params": []}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read()).get("result") == "OK"

    def present(table: str, col: str, value: str) -> int:
        return db.count(table, f"{col} = ?", (value,))

    assert present("active_watchers", "callid", short_dlg.call_id) == 1
    assert present("presentity", "username", short) == 1

    wait_for(lambda: present("presentity", "username", stale) == 0
             and present("active_watchers", "callid", stale_callid) == 0, 4, "the stale rows to be purged")
    wait_for(lambda: present("presentity", "username", short) == 0
             and present("active_watchers", "callid", short_dlg.call_id) == 0
             and present("ext", "callid", short_dlg.call_id) == 0, 6, "the expired rows to be purged")
    assert present("presentity", "username", long_) == 1
    assert present("active_watchers", "callid", long_dlg.call_id) == 1
    assert present("ext", "callid", long_dlg.call_id) == 1
    assert present("presentity", "username", hard) == 1
    assert srv.alive()
