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


# Tables presenced may add to a Kamailio database: its own, and Kamailio's
# auth_db `subscriber` (v7, Kamailio's own schema) when that is missing.
ADDED_TABLES = {"presenced_active_watchers_ext": None, "subscriber": 7}


def assert_still_kamailio(before: dict, after: dict) -> None:
    assert {t: after["versions"][t] for t in EXPECTED_VERSIONS} == EXPECTED_VERSIONS
    assert {t: after["versions"].get(t) for t in before["versions"]} == before["versions"]
    added = after["tables"] - before["tables"]
    assert "presenced_active_watchers_ext" in added and added <= set(ADDED_TABLES), added
    for t in set(after["versions"]) - set(before["versions"]):
        assert t in added and after["versions"][t] == ADDED_TABLES[t], (t, after["versions"][t])
    assert after["columns"] == before["columns"]
    assert after["objects"] == before["objects"]


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
    assert_still_kamailio(before, schema_snapshot(path))

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


# --------------------------------------------------------------- and back
KAMAILIO = os.environ.get("PRESENCED_KAMAILIO_BIN", "/usr/sbin/kamailio")
KAMAILIO_MODULES = os.environ.get("PRESENCED_KAMAILIO_MODULES", "/usr/lib/x86_64-linux-gnu/kamailio/modules")

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "db_sqlite.so"
loadmodule "presence.so"
loadmodule "presence_xml.so"
loadmodule "presence_dialoginfo.so"
modparam("presence", "db_url", "{url}")
modparam("presence_xml", "db_url", "{url}")
modparam("presence_xml", "force_active", 1)
modparam("presence", "subs_db_mode", 2)
request_route {{
    if (method == "PUBLISH") {{ handle_publish(); exit; }}
    if (method == "SUBSCRIBE") {{ handle_subscribe(); exit; }}
    sl_send_reply("404", "Not here");
}}
"""


class Kamailio:
    """Kamailio 5.6 itself (presence + db_sqlite) on the same file, port and socket."""

    def __init__(self, tmp_path, url: str, port: int) -> None:
        import subprocess

        mods = [os.path.join(KAMAILIO_MODULES, m + ".so")
                for m in ("tm", "sl", "db_sqlite", "presence", "presence_xml", "presence_dialoginfo")]
        if not os.access(KAMAILIO, os.X_OK) or not all(os.path.exists(m) for m in mods):
            pytest.skip("Kamailio 5.6 with presence and db_sqlite modules is not installed "
                        "(kamailio-presence-modules, kamailio-sqlite-modules)")
        cfg = tmp_path / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG.format(port=port, modules=KAMAILIO_MODULES, url=url))
        run = tmp_path / "kamailio-run"
        run.mkdir()
        self.log = open(tmp_path / "kamailio.log", "wb")
        # -w /: Kamailio resolves sqlite:///a/b as "a/b" from its working directory,
        # which is / for a daemon, so sqlite:///abs/path means the same to both.
        self.proc = subprocess.Popen([KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(run), "-w", "/"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.path = tmp_path / "kamailio.log"
        self.port = port

    def wait_ready(self, ua: UA, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("kamailio exited:\n" + self.output())
            try:
                ua.request("OPTIONS", f"sip:ping@127.0.0.1:{self.port}", timeout=0.3)
                return
            except TimeoutError:
                pass
        raise AssertionError("kamailio did not start:\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        return self.path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_kamailio_reads_what_presenced_wrote(tmp_path, servers, uas):
    """Kamailio → presenced → Kamailio again: Kamailio 5.6 serves presenced's
    publications and honours presenced's subscriptions and ETags."""
    path = tmp_path / "kamailio.db"
    url = kamailio_db(str(path))
    from sipclient import free_port

    port = free_port()
    w = uas(port, "bob")
    pres = aor(uid("alice"))
    k = insert_like_kamailio(path, server_port=port, ua_port=w.port, pres=pres, now=int(time.time()))
    srv = servers.start(url=url, port=port)
    pub = uas(port, "alice")

    pd = k["presence_dialog"]
    r = pub.publish(pres, pidf(pres, "written-by-presenced"), etag=k["etag"], expires=600)
    assert r.status == 200, r
    etag = r.sip_etag
    n = w.expect_notify(pd)
    last_cseq = n.cseq.seq
    # a subscription presenced itself created
    r, mine = w.subscribe(pres, "presence", expires=600)
    assert r.status == 200, r
    mine_cseq = w.expect_notify(mine).cseq.seq
    w.notifies(window=0.2)
    assert srv.sigterm() == 0

    kam = Kamailio(tmp_path, url, port)
    try:
        kam.wait_ready(pub)
        # Kamailio honours presenced's ETag...
        r = pub.publish(pres, etag=etag, expires=600)
        assert r.status == 200, (r, kam.output())
        w.notifies(window=0.3)
        # ...and the subscriptions, Kamailio's own and presenced's, with their CSeqs.
        for dlg, cseq in ((pd, last_cseq), (mine, mine_cseq)):
            r, _ = w.subscribe(pres, "presence", expires=600, dialog=dlg)
            assert r.status == 200, (r, kam.output())
            n = w.expect_notify(dlg)
            assert n.cseq.seq > cseq
            assert b"written-by-presenced" in n.body
    finally:
        kam.stop()
