"""Watcher authorization over real sockets: pres-rules in the xcap table.

The rules are stored with `presenced rules put` in a SQLite database, the
server is started on it without force_active, and watchers see what the
owner allowed: active with (filtered) state, pending without state, or
terminated;reason=rejected.
"""

from __future__ import annotations

import re

import pytest
from e2e_support import Phone, cli, pidf, sub_state

RULES = """<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns="urn:ietf:params:xml:ns:pres-rules" xmlns:cr="urn:ietf:params:xml:ns:common-policy">
  <cr:rule id="friends">
    <cr:conditions><cr:identity><cr:one id="sip:bob@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>allow</sub-handling></cr:actions>
    <cr:transformations><provide-services><all-services/></provide-services></cr:transformations>
  </cr:rule>
  <cr:rule id="also-bob">
    <cr:conditions><cr:identity><cr:one id="sip:bob@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>confirm</sub-handling></cr:actions>
  </cr:rule>
  <cr:rule id="blocked">
    <cr:conditions><cr:identity><cr:one id="sip:eve@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>block</sub-handling></cr:actions>
  </cr:rule>
  <cr:rule id="ask">
    <cr:conditions><cr:identity><cr:one id="sip:carol@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>confirm</sub-handling></cr:actions>
  </cr:rule>
  <cr:rule id="polite">
    <cr:conditions><cr:identity><cr:one id="sip:mallory@127.0.0.1"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>polite-block</sub-handling></cr:actions>
  </cr:rule>
</cr:ruleset>
"""


@pytest.fixture
def rules_db(tmp_path):
    db = f"sqlite://{tmp_path}/rules.db"
    f = tmp_path / "rules.xml"
    f.write_text(RULES)
    r = cli("rules", "put", "sip:alice@127.0.0.1", str(f), "--db-url", db)
    assert r.returncode == 0, r.stderr
    return db


def test_rules_decide_each_watcher(spawn, rules_db):
    srv = spawn("--db-url", rules_db)
    owner = Phone(srv.port, user="alice")
    assert owner.publish("sip:alice@127.0.0.1", pidf("sip:alice@127.0.0.1")).status == 200
    seen = {}
    for user in ("bob", "eve", "carol", "mallory", "dave"):
        w = Phone(srv.port, user=user)
        resp, dlg = w.subscribe("sip:alice@127.0.0.1")
        assert resp.status == 200
        n = w.expect_notify(dlg)
        seen[user] = (sub_state(n).split(";")[0], n.body)
    # every matching rule counts: allow beats confirm (RFC 4745 §10)
    assert seen["bob"][0] == "active" and b"<basic>open</basic>" in seen["bob"][1]
    assert seen["eve"][0] == "terminated" and seen["eve"][1] == b""
    assert seen["carol"][0] == "pending" and seen["carol"][1] == b""
    # polite-block looks active and unavailable (RFC 5025 §3.2.1): one closed service, not alice's
    assert seen["mallory"][0] == "active" and b"<basic>closed</basic>" in seen["mallory"][1]
    assert b"<basic>open</basic>" not in seen["mallory"][1]
    # inside a document, no matching rule is the null permission: block
    assert seen["dave"][0] == "terminated"


def test_owner_winfo_lists_pending_watcher(spawn, rules_db):
    srv = spawn("--db-url", rules_db)
    owner = Phone(srv.port, user="alice")
    resp, wd = owner.subscribe("sip:alice@127.0.0.1", event="presence.winfo")
    assert resp.status == 200
    first = owner.expect_notify(wd)
    assert b'state="full"' in first.body
    carol = Phone(srv.port, user="carol")
    resp, _ = carol.subscribe("sip:alice@127.0.0.1")
    assert resp.status == 200
    update = owner.expect_notify(wd)
    assert b'status="pending"' in update.body and b"sip:carol@127.0.0.1" in update.body


def test_no_rules_document_leaves_watchers_pending(spawn, tmp_path):
    srv = spawn("--db-url", f"sqlite://{tmp_path}/empty.db")
    w = Phone(srv.port, user="bob")
    resp, dlg = w.subscribe("sip:nobody@127.0.0.1")
    assert resp.status == 200
    assert sub_state(w.expect_notify(dlg)).split(";")[0] == "pending"


def test_no_rules_policy_same_domain(spawn, tmp_path):
    srv = spawn("--db-url", "memory", "--set", "presence_xml.no_rules_policy=same-domain")
    w = Phone(srv.port, user="bob")
    resp, dlg = w.subscribe("sip:nobody@127.0.0.1")
    assert resp.status == 200
    assert sub_state(w.expect_notify(dlg)).split(";")[0] == "active"


def test_rules_cli_rejects_invalid_document(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<ruleset xmlns='urn:example:wrong'/>")
    r = cli("rules", "put", "sip:alice@127.0.0.1", str(bad), "--db-url", f"sqlite://{tmp_path}/x.db")
    assert r.returncode == 2
    assert "invalid pres-rules" in r.stderr


def test_owner_approves_pending_watcher_by_changing_rules(spawn, tmp_path):
    """confirm → rules now allow carol → updateWatchers: carol active, winfo says approved."""
    import socket

    db = f"sqlite://{tmp_path}/approve.db"
    first = tmp_path / "first.xml"
    first.write_text(RULES)
    assert cli("rules", "put", "sip:alice@127.0.0.1", str(first), "--db-url", db).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    srv = spawn("--db-url", db, "--http", f"127.0.0.1:{http_port}")
    owner = Phone(srv.port, user="alice")
    assert owner.publish("sip:alice@127.0.0.1", pidf("sip:alice@127.0.0.1")).status == 200
    _, wd = owner.subscribe("sip:alice@127.0.0.1", event="presence.winfo")
    owner.expect_notify(wd)
    carol = Phone(srv.port, user="carol")
    _, cd = carol.subscribe("sip:alice@127.0.0.1")
    assert sub_state(carol.expect_notify(cd)).split(";")[0] == "pending"
    owner.expect_notify(wd)  # carol pending

    second = tmp_path / "second.xml"
    ask = '<cr:one id="sip:carol@127.0.0.1"/></cr:identity></cr:conditions>\n    <cr:actions><sub-handling>confirm</sub-handling>'
    assert ask in RULES
    second.write_text(RULES.replace(ask, ask.replace("confirm", "allow")))
    assert cli("rules", "put", "sip:alice@127.0.0.1", str(second), "--db-url", db).returncode == 0
    r = cli("rpc", "--url", f"http://127.0.0.1:{http_port}", "--json",
            "presence.updateWatchers", "sip:alice@127.0.0.1", "presence")
    assert r.returncode == 0, r.stderr
    n = carol.expect_notify(cd, timeout=3)
    assert sub_state(n).split(";")[0] == "active"
    # carol's rule grants no provide-* transformation: RFC 5025 withholds the tuples
    assert b"<presence" in n.body and b"<tuple" not in n.body
    w = owner.expect_notify(wd, timeout=3)
    assert b'status="active"' in w.body and b'event="approved"' in w.body


SPHERE_RULES = """<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns="urn:ietf:params:xml:ns:pres-rules" xmlns:cr="urn:ietf:params:xml:ns:common-policy">
  <cr:rule id="colleagues-at-work">
    <cr:conditions>
      <cr:identity><cr:one id="sip:bob@127.0.0.1"/></cr:identity>
      <cr:sphere value="work"/>
    </cr:conditions>
    <cr:actions><sub-handling>allow</sub-handling></cr:actions>
    <cr:transformations>
      <provide-services><all-services/></provide-services><provide-all-attributes/>
    </cr:transformations>
  </cr:rule>
</cr:ruleset>
"""


def _pidf_in_sphere(entity: str, sphere: str, note: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        f' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{entity}">\n'
        f'  <tuple id="t1"><status><basic>open</basic></status><note>{note}</note></tuple>\n'
        f'  <dm:person id="p1"><rpid:sphere>{sphere}</rpid:sphere></dm:person>\n'
        "</presence>\n"
    ).encode()


def test_sphere_change_reauthorizes_watchers(spawn, tmp_path):
    """bob may watch alice only while she is at work (RFC 4480 sphere, RFC 5025 §3.1.2)."""
    db = f"sqlite://{tmp_path}/sphere.db"
    f = tmp_path / "sphere.xml"
    f.write_text(SPHERE_RULES)
    assert cli("rules", "put", "sip:alice@127.0.0.1", str(f), "--db-url", db).returncode == 0
    srv = spawn("--db-url", db, "--set", "presence.enable_sphere_check=1")
    owner = Phone(srv.port, user="alice")
    r = owner.publish("sip:alice@127.0.0.1", _pidf_in_sphere("sip:alice@127.0.0.1", "work", "in the office"))
    assert r.status == 200
    bob = Phone(srv.port, user="bob")
    resp, dlg = bob.subscribe("sip:alice@127.0.0.1")
    assert resp.status == 200
    n = bob.expect_notify(dlg)
    assert sub_state(n).split(";")[0] == "active" and b"in the office" in n.body

    r = owner.publish("sip:alice@127.0.0.1", _pidf_in_sphere("sip:alice@127.0.0.1", "home", "on the sofa"),
                      etag=r.get("sip-etag"))
    assert r.status == 200
    seen = bob.notifies(dlg, window=1.0)
    assert [sub_state(x).split(";")[0] for x in seen] == ["terminated"]
    assert "reason=rejected" in sub_state(seen[0])
    assert all(b"sofa" not in x.body for x in seen)
    # a new subscription while alice is at home is refused too
    resp, dlg2 = bob.subscribe("sip:alice@127.0.0.1")
    n = bob.expect_notify(dlg2)
    assert sub_state(n).startswith("terminated") and n.body == b""


def test_entering_the_sphere_activates_a_pending_watcher(spawn, tmp_path):
    db = f"sqlite://{tmp_path}/sphere2.db"
    f = tmp_path / "sphere2.xml"
    confirm = ('  <cr:rule id="ask-bob">\n    <cr:conditions><cr:identity><cr:one id="sip:bob@127.0.0.1"/>'
               "</cr:identity></cr:conditions>\n    <cr:actions><sub-handling>confirm</sub-handling></cr:actions>\n"
               "  </cr:rule>\n</cr:ruleset>")
    f.write_text(SPHERE_RULES.replace("</cr:ruleset>", confirm))
    assert cli("rules", "put", "sip:alice@127.0.0.1", str(f), "--db-url", db).returncode == 0
    srv = spawn("--db-url", db, "--set", "presence.enable_sphere_check=1")
    owner = Phone(srv.port, user="alice")
    r = owner.publish("sip:alice@127.0.0.1", _pidf_in_sphere("sip:alice@127.0.0.1", "home", "on the sofa"))
    bob = Phone(srv.port, user="bob")
    _, dlg = bob.subscribe("sip:alice@127.0.0.1")
    n = bob.expect_notify(dlg)
    assert sub_state(n).split(";")[0] == "pending" and n.body == b""
    owner.publish("sip:alice@127.0.0.1", _pidf_in_sphere("sip:alice@127.0.0.1", "work", "in the office"),
                  etag=r.get("sip-etag"))
    seen = bob.notifies(dlg, window=1.0)
    assert [sub_state(x).split(";")[0] for x in seen] == ["active"]
    assert b"in the office" in seen[0].body


def test_pending_watcher_that_leaves_is_listed_waiting(spawn, rules_db):
    """RFC 3857/3858 over real sockets: carol (confirm) unsubscribes while still
    pending; the owner's next full winfo state lists her as waiting."""
    srv = spawn("--db-url", rules_db)
    carol = Phone(srv.port, user="carol")
    resp, cd = carol.subscribe("sip:alice@127.0.0.1")
    assert resp.status == 200
    assert sub_state(carol.expect_notify(cd)).split(";")[0] == "pending"
    resp, _ = carol.subscribe("sip:alice@127.0.0.1", expires=0, dialog=cd)
    assert resp.status == 200
    owner = Phone(srv.port, user="alice")
    resp, wd = owner.subscribe("sip:alice@127.0.0.1", event="presence.winfo")
    assert resp.status == 200
    full = owner.expect_notify(wd)
    assert b'state="full"' in full.body
    assert b'status="waiting"' in full.body and b"sip:carol@127.0.0.1" in full.body
    # named by the id her subscription had in partial documents (RFC 3858 §4)
    assert re.search(rb'<watcher id="w[^"]+" status="waiting"', full.body)


def test_rules_written_into_the_table_apply_to_the_next_subscribe(spawn, tmp_path):
    """Kamailio reads the xcap row on every SUBSCRIBE; presenced answers from
    its cache and re-reads the row right after, so rules a provisioning system
    wrote (no updateWatchers) decide the new watcher within a moment."""
    db = f"sqlite://{tmp_path}/late.db"
    srv = spawn("--db-url", db)
    owner = Phone(srv.port, user="alice")
    assert owner.publish("sip:alice@127.0.0.1", pidf("sip:alice@127.0.0.1")).status == 200
    rules = tmp_path / "late.xml"
    ask = '<cr:one id="sip:carol@127.0.0.1"/></cr:identity></cr:conditions>\n    <cr:actions><sub-handling>confirm</sub-handling>'
    rules.write_text(RULES.replace(ask, ask.replace("confirm", "allow")))
    assert cli("rules", "put", "sip:alice@127.0.0.1", str(rules), "--db-url", db).returncode == 0
    carol = Phone(srv.port, user="carol")
    _, cd = carol.subscribe("sip:alice@127.0.0.1")
    states = [sub_state(carol.expect_notify(cd)).split(";")[0]]
    if states[0] != "active":
        states.append(sub_state(carol.expect_notify(cd, timeout=3)).split(";")[0])
    assert states[-1] == "active", states
