"""Every RPC method against real SIP traffic (memory mode)."""

from __future__ import annotations

import time

import pytest
from api_support import HOST, LiveServer, LiveWorkers, RpcFailed, pidf, uid
from sipclient import SipClient


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "2-workers"])
def live(request):
    """Every test against one process and against `serve --workers 2`."""
    srv = (LiveServer() if request.param == 1 else LiveWorkers(request.param)).start()
    yield srv
    srv.stop()


@pytest.fixture
def scene(live):
    """alice publishes, bob watches alice (UDP); yields the pieces."""
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    pub_ua = SipClient(live.port, user=alice)
    bob = SipClient(live.port, user=uid("bob"))
    r = pub_ua.publish(aor, pidf(aor, note="at lunch"), expires=120)
    assert r.status == 200
    etag = r.get("sip-etag")
    resp, dialog = bob.subscribe(aor, expires=300)
    assert resp.status == 200
    n = bob.expect_notify(dialog)
    assert b"at lunch" in n.body
    yield {"alice": alice, "aor": aor, "etag": etag, "bob": bob, "dialog": dialog, "pub_ua": pub_ua}
    bob.close()
    pub_ua.close()


def wait_for(fn, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def test_list_methods(live):
    names = live.rpc("system.listMethods")
    for m in ("presence.cleanup", "presence.refreshWatchers", "presence.updateWatchers",
              "presence.presentity_list", "presence.presentity_show", "presence.watcher_list",
              "presence.publish_cache_sync", "presence.subscription_show", "presence.counters",
              "core.stats", "core.config"):
        assert m in names
    assert "uri event type [file_uri] [filename]" in live.rpc("system.methodHelp", "presence.refreshWatchers")


def test_presentity_list(live, scene):
    rows = [r for r in live.rpc("presence.presentity_list") if r["user"] == scene["alice"]]
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {"user", "domain", "event", "etag", "sender", "expires"}
    assert row["domain"] == HOST and row["event"] == "presence" and row["etag"] == scene["etag"]
    assert abs(row["expires"] - (time.time() + 120)) < 5
    full = [r for r in live.rpc("presence.presentity_list", "full") if r["user"] == scene["alice"]][0]
    assert {"received_time", "priority", "ruid", "body", "hashid"} <= set(full)
    assert "at lunch" in full["body"]
    assert abs(full["received_time"] - time.time()) < 5


def test_presentity_show(live, scene):
    alice = scene["alice"]
    rows = live.rpc("presence.presentity_show", "basic", alice.upper(), "*")
    assert [r["etag"] for r in rows] == [scene["etag"]]
    assert "body" not in rows[0]
    rows = live.rpc("presence.presentity_show", "full", "*", HOST)
    assert any(r["user"] == alice and "at lunch" in r["body"] for r in rows)
    assert live.rpc("presence.presentity_show", "basic", alice, "other.example") == []


def test_watcher_list(live, scene):
    d = scene["dialog"]
    rows = live.rpc("presence.watcher_list", "basic", scene["aor"].upper().replace("SIP:", "sip:"))
    assert len(rows) == 1
    row = rows[0]
    assert row["callid"] == d.call_id
    assert row["pres_uri"] == scene["aor"] and row["event"] == "presence"
    assert row["status"] == 1 and row["to_user"] == scene["alice"]
    assert row["watcher_user"] == scene["bob"].user and row["watcher_domain"] == HOST
    assert f":{scene['bob'].port}" in row["contact"]
    assert abs(row["expires"] - (time.time() + 300)) < 5
    assert "to_tag" not in row
    full = live.rpc("presence.watcher_list", "full", scene["aor"])[0]
    assert full["to_tag"] == d.remote_tag and full["from_tag"] == d.local_tag
    assert full["local_cseq"] == 1 and full["remote_cseq"] == 1
    assert full["socket"] == f"udp:{HOST}:{live.port}"
    assert live.rpc("presence.watcher_list", "basic", f"sip:nobody@{HOST}") == []


def test_subscription_show(live, scene):
    d = scene["dialog"]
    show = lambda: live.rpc("presence.subscription_show", d.call_id, d.remote_tag, d.local_tag)  # noqa: E731
    sub = wait_for(lambda: (s := show())["last_notify_status"] == 200 and s)
    assert sub["status"] == "active" and sub["reason"] is None
    assert sub["pres_uri"] == scene["aor"] and sub["event"] == "presence"
    assert sub["local_cseq"] == 1 and sub["remote_cseq"] == 1 and sub["notifies_sent"] == 1
    assert sub["route_set"] == [] and sub["remote_target"].startswith(f"sip:{scene['bob'].user}@")
    assert sub["source"] == f"udp:{HOST}:{scene['bob'].port}"
    assert 290 < sub["expires_in"] <= 300
    assert sub["notify_to"].endswith(f"tag={d.local_tag}")
    assert live.rpc("presence.subscription_show", d.call_id, d.remote_tag, d.local_tag, "presence")["callid"] == d.call_id
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.subscription_show", d.call_id, "nope", d.local_tag)
    assert e.value.code == 404


def test_refresh_watchers_type1_sends_notify(live, scene):
    bob, d = scene["bob"], scene["dialog"]
    assert live.rpc("presence.refreshWatchers", scene["aor"], "presence", 1) == {"notified": 1}
    n = bob.expect_notify(d)
    assert int(n.get("cseq").split()[0]) == 2
    assert b"at lunch" in n.body


def test_refresh_watchers_type0_and_update_watchers(live, scene):
    # force_active=1: there is no rules document, so type 0 fails (as in Kamailio);
    # updateWatchers changes nothing; nothing is sent.
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 0)
    assert e.value.code == 404 and "no pres-rules document" in e.value.message
    assert live.rpc("presence.updateWatchers", scene["aor"], "presence") == {"changed": 0}
    assert scene["bob"].no_message(0.2)


def test_refresh_watchers_type2_from_a_file(live, scene, tmp_path):
    bob, d, aor = scene["bob"], scene["dialog"], scene["aor"]
    f = tmp_path / "hard.xml"
    f.write_bytes(pidf(aor, note="from a file").replace(b'id="t1"', b'id="hard"'))
    res = live.rpc("presence.refreshWatchers", aor, "presence", 2, f.as_uri(), "hard.xml")
    assert res == {"publication": "stored", "notified": 1}
    n = bob.expect_notify(d)
    assert b"from a file" in n.body and b"at lunch" in n.body  # composed with the PUBLISHed state
    rows = live.rpc("presence.presentity_show", "basic", scene["alice"], "*")
    hard = [r for r in rows if r["etag"] == "hard.xml"]
    assert len(hard) == 1 and hard[0]["expires"] > time.time() + 5 * 365 * 86400  # never expires
    # a plain path works too; a changed file replaces the document under the same ETag
    f.write_bytes(pidf(aor, note="changed file"))
    assert live.rpc("presence.refreshWatchers", aor, "presence", 2, str(f), "hard.xml")["publication"] == "stored"
    n = bob.expect_notify(d)
    assert b"changed file" in n.body and b"from a file" not in n.body
    # an empty file removes it
    f.write_bytes(b"")
    assert live.rpc("presence.refreshWatchers", aor, "presence", 2, str(f), "hard.xml")["publication"] == "removed"
    assert b"changed file" not in bob.expect_notify(d).body
    assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", scene["alice"], "*")] == [scene["etag"]]
    # removing it again: nothing had that ETag any more, and nobody is told
    again = live.rpc("presence.refreshWatchers", aor, "presence", 2, str(f), "hard.xml")
    assert again == {"publication": "absent", "notified": 0}


def test_refresh_watchers_type2_bad_documents(live, scene, tmp_path):
    aor = scene["aor"]
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", aor, "presence", 2, str(tmp_path / "missing.xml"), "x.xml")
    assert e.value.code == 404 and "no such file" in e.value.message
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<presence>not pidf")
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", aor, "presence", 2, str(bad), "x.xml")
    assert e.value.code == 500 and "invalid document" in e.value.message
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", aor, "presence", 2, "file://otherhost/etc/x.xml", "x.xml")
    assert e.value.code == -32602 and "local files" in e.value.message
    with pytest.raises(RpcFailed) as e:  # a winfo package takes no publications
        live.rpc("presence.refreshWatchers", aor, "presence.winfo", 2, str(bad), "x.xml")
    assert e.value.code == 500
    with pytest.raises(RpcFailed) as e:  # another publication's ETag cannot be hijacked
        good = tmp_path / "good.xml"
        good.write_bytes(pidf("sip:someone@127.0.0.1"))
        live.rpc("presence.refreshWatchers", "sip:someone@127.0.0.1", "presence", 2, str(good), scene["etag"])
    assert e.value.code == 500 and "another publication" in e.value.message
    assert scene["bob"].no_message(0.2)


def test_refresh_watchers_errors(live, scene):
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 2)
    assert e.value.code == -32602 and "file" in e.value.message
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 1, "f", "g")
    assert e.value.code == -32602
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 0, "f", "g")
    assert e.value.code == -32602 and "only valid with type 2" in e.value.message
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 3)
    assert e.value.code == -32602
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "presence", 2, "http://x/pidf", "doc.xml")
    assert e.value.code == -32602 and "file://" in e.value.message
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", scene["aor"], "no-such-event", 1)
    assert e.value.code == 500
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", "", "presence", 1)
    assert e.value.code == -32602
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.updateWatchers", "mailto:x@y", "presence")
    assert e.value.code == -32602


def test_cleanup_and_publish_cache_sync(live, scene):
    assert live.rpc("presence.cleanup") == "Reload OK"
    assert live.rpc("presence.publish_cache_sync") == "OK"
    # nothing live was touched
    assert live.rpc("presence.presentity_show", "basic", scene["alice"], "*")
    assert len(live.rpc("presence.watcher_list", "basic", scene["aor"])) == 1


def test_cleanup_expires_overdue_subscription(live, scene):
    """A subscription whose deadline passed (e.g. a stalled timer) goes, with a timeout NOTIFY."""
    d, bob = scene["dialog"], scene["bob"]
    if isinstance(live, LiveWorkers):
        pytest.skip("reaches into the engine of an in-process server")
    engine = live.server.core.engine

    def overdue():
        for s in engine.subs_by_dialog.values():
            if s.call_id == d.call_id:
                # Its expiry entry still waits for the old deadline: as if the timer stalled.
                s.expires_at = live.loop.time() - 1

    live.in_loop(overdue)
    assert live.rpc("presence.cleanup") == "Reload OK"
    n = bob.expect_notify(d)
    assert n.get("subscription-state").startswith("terminated;reason=timeout")
    assert live.rpc("presence.watcher_list", "basic", scene["aor"]) == []


def test_counters_and_stats(live, scene):
    c = live.rpc("presence.counters")
    assert c["sip"]["requests"]["PUBLISH"] >= 1 and c["sip"]["requests"]["SUBSCRIBE"] >= 1
    assert c["sip"]["responses"]["200"] >= 2
    assert c["presence"]["publications"]["presence"] >= 1
    assert c["presence"]["subscriptions"]["presence"]["active"] >= 1
    assert c["notify"]["sent"] >= 1
    assert c["storage"]["backend"] == "memory"
    assert set(c["transactions"]) >= {"server", "client"}
    assert live.rpc("core.stats").keys() == c.keys()


def test_core_config_redacts_token(live):
    cfg = live.rpc("core.config")
    assert cfg["http"]["token"] == "***"
    assert cfg["db"]["url"] == "memory"
    assert cfg["presence_xml"]["force_active"] == 1
    assert live.token not in str(cfg)
