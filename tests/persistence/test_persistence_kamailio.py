"""Starting on a database that Kamailio 5.6 created and filled.

The SQLite file is built from Debian's Kamailio schema files
(standard-create.sql + presence-create.sql); rows are inserted the way
Kamailio 5.6's presence module writes them (kamailio-presence-spec.md §6,
§8.1, §10.9): ETag `a.<startup>.<pid>.<counter>.<n>`, socket_info
`udp:IP:PORT`, record_route NULL, reason '', updated/updated_winfo -1.
presenced must serve and honour them, and leave the database readable by
Kamailio: same `version` rows, no column added to any Kamailio table.
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from persist_support import UA, Database, Dialog, aor, body_version, dialog_info, pidf, sub_state, uid
from storage_support import unavailable

SQL_DIR = os.environ.get("PRESENCED_KAMAILIO_SQL_DIR", "/usr/share/kamailio/db_sqlite")
KAMAILIO_TABLES = ("presentity", "active_watchers", "watchers", "xcap")
EXPECTED_VERSIONS = {"presentity": 5, "active_watchers": 12, "watchers": 3, "xcap": 4}
DIALOG_CT = "application/dialog-info+xml"


def kamailio_db(path) -> str:
    """A SQLite file created by Kamailio's own SQL; returns its sqlite:// URL."""
    files = [os.path.join(SQL_DIR, f) for f in ("standard-create.sql", "presence-create.sql")]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        unavailable(f"Kamailio's SQLite schema is not installed ({', '.join(missing)}; "
                    "Debian package kamailio-sqlite-modules)")
    conn = sqlite3.connect(path)
    try:
        for f in files:
            with open(f) as fh:
                conn.executescript(fh.read())
        conn.commit()
    finally:
        conn.close()
    return f"sqlite://{path}"


def schema_snapshot(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name IN (?, ?, ?, ?, 'version') ORDER BY name",
            KAMAILIO_TABLES,
        ).fetchall()
        columns = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in (*KAMAILIO_TABLES, "version")}
        versions = dict(conn.execute("SELECT table_name, table_version FROM version").fetchall())
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    return {"objects": objects, "columns": columns, "versions": versions, "tables": tables}


def insert_like_kamailio(path, *, server_port: int, ua_port: int, pres: str, now: int) -> dict:
    """One presence and one dialog publication, a presence and a dialog subscription
    (active, 2 NOTIFYs already sent: local_cseq 3, version 2), and the watchers decision."""
    user, domain = pres[4:].split("@")
    rows = {
        "etag": "a.1700000000.12345.17.0",
        "dialog_etag": "a.1700000000.12345.18.0",
        "presence_dialog": Dialog(f"{uid('k')}@test", "f8c1d2e3", "4a1e5fbd0d9a8a0c2d6c1de8a7ed5f21-9b35",
                                  "sip:bob@127.0.0.1", pres, "presence", cseq=1),
        "dialog_dialog": Dialog(f"{uid('k')}@test", "a7b6c5d4", "4a1e5fbd0d9a8a0c2d6c1de8a7ed5f21-9b36",
                                "sip:bob@127.0.0.1", pres, "dialog", cseq=1),
    }
    conn = sqlite3.connect(path)
    try:
        p = ("INSERT INTO presentity (username, domain, event, etag, expires, received_time, body, sender, priority, ruid)"
             " VALUES (?, ?, ?, ?, ?, ?, ?, '', 0, ?)")
        conn.execute(p, (user, domain, "presence", rows["etag"], now + 600, now - 30,
                         pidf(pres, "from-kamailio"), "pres-5f3c1a2b-12345-1"))
        conn.execute(p, (user, domain, "dialog", rows["dialog_etag"], now + 600, now - 30,
                         dialog_info(pres, "early"), "pres-5f3c1a2b-12345-2"))
        a = ("INSERT INTO active_watchers (presentity_uri, watcher_username, watcher_domain, to_user, to_domain,"
             " event, event_id, to_tag, from_tag, callid, local_cseq, remote_cseq, contact, record_route, expires,"
             " status, reason, version, socket_info, local_contact, from_user, from_domain, updated, updated_winfo,"
             " flags, user_agent)"
             " VALUES (?, 'bob', '127.0.0.1', ?, ?, ?, NULL, ?, ?, ?, 3, 1, ?, NULL, ?, 1, '', 2, ?, ?,"
             " 'bob', '127.0.0.1', -1, -1, 0, 'Kamailio-test-UA')")
        for d in (rows["presence_dialog"], rows["dialog_dialog"]):
            conn.execute(a, (pres, user, domain, d.event, d.remote_tag, d.local_tag, d.call_id,
                             f"sip:bob@127.0.0.1:{ua_port}", now + 600, f"udp:127.0.0.1:{server_port}",
                             f"sip:127.0.0.1:{server_port};transport=udp"))
        conn.execute("INSERT INTO watchers (presentity_uri, watcher_username, watcher_domain, event, status, reason,"
                     " inserted_time) VALUES (?, 'bob', '127.0.0.1', 'presence', 1, '', ?)", (pres, now - 30))
        conn.commit()
    finally:
        conn.close()
    return rows


def test_serves_a_database_kamailio_created_and_filled(tmp_path, servers, uas):
    path = tmp_path / "kamailio.db"
    url = kamailio_db(str(path))
    before = schema_snapshot(path)
    assert {t: before["versions"][t] for t in EXPECTED_VERSIONS} == EXPECTED_VERSIONS

    from sipclient import free_port

    port = free_port()
    w = uas(port, "bob")
    pres = aor(uid("alice"))
    k = insert_like_kamailio(path, server_port=port, ua_port=w.port, pres=pres, now=int(time.time()))

    # Kamailio's defaults: publ_cache=1, subs_db_mode=2; no force_active (the
    # watchers row says active).
    srv = servers.start(url=url, port=port)
    assert "restored 2 publications and 2 subscriptions" in srv.output()
    pub = uas(port, "alice")

    # PUBLISH refresh with Kamailio's ETag.
    r = pub.publish(pres, etag=k["etag"], expires=600)
    assert r.status == 200, r
    etag = r.sip_etag
    assert etag and etag != k["etag"]
    w.notifies(window=0.3)

    # In-dialog refresh of Kamailio's subscriptions: 200, NOTIFY continues the CSeq.
    pd, dd = k["presence_dialog"], k["dialog_dialog"]
    r, _ = w.subscribe(pres, "presence", expires=600, dialog=pd)
    assert r.status == 200, r
    n = w.expect_notify(pd)
    assert n.cseq.seq >= 4
    assert n.from_.tag == pd.remote_tag and n.to.tag == pd.local_tag
    assert sub_state(n).startswith("active")
    assert b"from-kamailio" in n.body
    p_cseq = n.cseq.seq

    r, _ = w.subscribe(pres, "dialog", expires=600, dialog=dd, extra=[("Accept", DIALOG_CT)])
    assert r.status == 200, r
    n = w.expect_notify(dd)
    assert n.cseq.seq >= 4
    assert body_version(n.body) > 2
    assert b"early" in n.body

    # A change of Kamailio's publication reaches Kamailio's subscription.
    r = pub.publish(pres, pidf(pres, "changed-by-presenced"), etag=etag, expires=600)
    assert r.status == 200, r
    etag = r.sip_etag
    n = w.expect_notify(pd)
    assert b"changed-by-presenced" in n.body and b"from-kamailio" not in n.body
    assert n.cseq.seq > p_cseq
    last_cseq = n.cseq.seq

    assert srv.sigterm() == 0

    # Still a Kamailio database: same versions, same Kamailio tables and columns.
    after = schema_snapshot(path)
    assert after["versions"] == before["versions"]
    assert {t: after["versions"][t] for t in EXPECTED_VERSIONS} == EXPECTED_VERSIONS
    assert after["columns"] == before["columns"]
    assert after["objects"] == before["objects"]
    assert after["tables"] - before["tables"] == {"presenced_active_watchers_ext"}

    # ...holding what Kamailio expects to read.
    db = Database("sqlite", url, {})
    user, domain = pres[4:].split("@")
    prow = db.fetch("SELECT etag, body, expires FROM {presentity} WHERE username = ? AND event = 'presence'", (user,))
    assert [r[0] for r in prow] == [etag]
    assert b"changed-by-presenced" in bytes(prow[0][1])
    wrows = db.fetch("SELECT callid, local_cseq, version, status, socket_info, record_route, contact"
                     " FROM {active_watchers} WHERE presentity_uri = ? ORDER BY event DESC", (pres,))
    assert len(wrows) == 2
    (callid, cseq, version, status, sock, rr, contact) = wrows[0]
    assert callid == pd.call_id and cseq == last_cseq and version > 2 and status == 1
    assert sock == f"udp:127.0.0.1:{port}" and rr is None and contact == f"sip:bob@127.0.0.1:{w.port}"
