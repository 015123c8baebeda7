"""The --route hook (Kamailio's request_route in Python) changes behaviour."""

from __future__ import annotations

import os

from e2e_support import Phone, Server, pidf, sub_state

HOOK = '''
def route(ctx):
    if ctx.method == "MESSAGE":
        ctx.reply(403, "No Messages Here")
    elif ctx.method == "SUBSCRIBE":
        pai = ctx.request.get("P-Asserted-Identity")
        ctx.handle_subscribe(watcher_uri=pai.strip("<>") if pai else None)
    elif ctx.method == "PUBLISH" and ctx.request.uri.user == "blocked":
        ctx.reply(404, "Not Found")
    else:
        ctx.default()


def notify_reply(subscription, response):
    return response is not None and response.status == 480
'''


def test_route_hook_replies_and_sets_watcher_identity(tmp_path, monkeypatch):
    (tmp_path / "myroute.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    srv = Server("--route", "myroute:route", "--set", "presence_xml.force_active=1").start()
    try:
        p = Phone(srv.port, user="x")
        assert p.request("MESSAGE", "sip:bob@127.0.0.1").status == 403
        assert p.publish("sip:blocked@127.0.0.1", pidf("sip:blocked@127.0.0.1")).status == 404
        assert p.publish("sip:ok@127.0.0.1", pidf("sip:ok@127.0.0.1")).status == 200
        # the owner's winfo shows the identity the hook chose, not the From
        owner = Phone(srv.port, user="ok")
        _, wd = owner.subscribe("sip:ok@127.0.0.1", event="presence.winfo",
                                extra=[("P-Asserted-Identity", "<sip:ok@127.0.0.1>")])
        assert sub_state(owner.expect_notify(wd)).startswith("active")
        w = Phone(srv.port, user="anonymous")
        _, d = w.subscribe("sip:ok@127.0.0.1", extra=[("P-Asserted-Identity", "<sip:real@127.0.0.1>")])
        w.expect_notify(d)
        update = owner.expect_notify(wd)
        assert b"sip:real@127.0.0.1" in update.body and b"anonymous" not in update.body
    finally:
        srv.stop()


def test_notify_reply_hook_can_delete_the_subscription(tmp_path, monkeypatch):
    (tmp_path / "myroute2.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    srv = Server("--route", "myroute2:route", "--set", "presence_xml.force_active=1").start()
    try:
        pub = Phone(srv.port, user="pub")
        keep = Phone(srv.port, user="keep")
        drop = Phone(srv.port, user="drop")
        _, kd = keep.subscribe("sip:hk@127.0.0.1")
        keep.expect_notify(kd)
        drop.notify_code = 480  # the hook deletes this one
        _, dd = drop.subscribe("sip:hk@127.0.0.1")
        drop.expect_notify(dd)
        assert pub.publish("sip:hk@127.0.0.1", pidf("sip:hk@127.0.0.1")).status == 200
        keep.expect_notify(kd)
        assert drop.no_notify(dd, window=0.8)
    finally:
        srv.stop()
