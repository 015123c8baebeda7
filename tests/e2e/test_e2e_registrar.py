"""The built-in registrar (RFC 3261 §10.3) and the reg event package (RFC 3680)."""

from __future__ import annotations

import re

from e2e_support import HOST, Phone, uid, xml_attr


def register(ph: Phone, aor: str, contact: str | None, expires: int | None, call_id: str | None = None, cseq: int = 1):
    h = []
    if contact is not None:
        h.append(("Contact", contact))
    if expires is not None:
        h.append(("Expires", str(expires)))
    return ph.request("REGISTER", f"sip:{HOST}", h, to_uri=aor, from_uri=aor, call_id=call_id, cseq=cseq)


def _bindings(resp) -> list[str]:
    return [c.strip() for c in resp.get_all("Contact")]


def test_register_200_with_contact_expires(server, phones, transport):
    name = uid("reg")
    aor = f"sip:{name}@{HOST}"
    ph = phones(server, transport, user=name)
    r = register(ph, aor, ph.contact, 600)
    assert r.status == 200
    assert r.to.tag
    contacts = _bindings(r)
    assert len(contacts) == 1
    assert ph.contact.strip("<>") in contacts[0]
    m = re.search(r";\s*expires=(\d+)", contacts[0])
    assert m and 590 <= int(m.group(1)) <= 600
    # a query (no Contact) lists the binding
    q = register(ph, aor, None, None, cseq=2)
    assert q.status == 200 and len(_bindings(q)) == 1


def test_register_wildcard_removes_all(server, phones, transport):
    name = uid("reg")
    aor = f"sip:{name}@{HOST}"
    ph = phones(server, transport, user=name)
    call_id = uid("cid")
    assert register(ph, aor, ph.contact, 600, call_id=call_id, cseq=1).status == 200
    assert register(ph, aor, f"<sip:{name}@192.0.2.8:5062>", 600, call_id=call_id, cseq=2).status == 200
    r = register(ph, aor, "*", 0, call_id=call_id, cseq=3)
    assert r.status == 200
    assert _bindings(r) == []
    q = register(ph, aor, None, None, call_id=call_id, cseq=4)
    assert q.status == 200 and _bindings(q) == []


def test_same_instance_from_a_new_port_is_the_same_binding(server, phones, transport):
    """Linphone over TCP registers its listening port and un-registers from the
    connection's port with the same +sip.instance (RFC 5626 §6, RFC 5627): the
    binding is matched by instance, and the 200 echoes the instance."""
    name = uid("reg")
    aor = f"sip:{name}@{HOST}"
    ph = phones(server, transport, user=name)
    call_id = uid("cid")
    inst = '+sip.instance="<urn:uuid:86d4cb53-3590-00cd-8644-a1ed4e54c2d4>"'
    r = register(ph, aor, f"<sip:{name}@127.0.0.1:6026;transport=tcp>;{inst}", 600, call_id=call_id, cseq=1)
    assert r.status == 200
    [c] = _bindings(r)
    assert "6026" in c and inst in c
    # a refresh from another port moves the binding, it does not add a second one
    r = register(ph, aor, f"<sip:{name}@127.0.0.1:55212;transport=tcp>;{inst}", 600, call_id=call_id, cseq=2)
    [c] = _bindings(r)
    assert "55212" in c
    r = register(ph, aor, f"<sip:{name}@127.0.0.1:55234;transport=tcp>;{inst}", 0, call_id=call_id, cseq=3)
    assert r.status == 200 and _bindings(r) == []
    # without an instance the URI decides: two addresses are two bindings
    assert register(ph, aor, f"<sip:{name}@127.0.0.1:7001>", 600, call_id=call_id, cseq=4).status == 200
    r = register(ph, aor, f"<sip:{name}@127.0.0.1:7002>", 600, call_id=call_id, cseq=5)
    assert len(_bindings(r)) == 2


def test_register_wildcard_needs_expires_0(server, phones):
    name = uid("reg")
    ph = phones(server, "udp", user=name)
    assert register(ph, f"sip:{name}@{HOST}", "*", 600).status == 400


def test_registrar_disabled_405(spawn, phones):
    srv = spawn("--set", "presence_xml.force_active=1", "--set", "registrar.enabled=0")
    name = uid("reg")
    ph = phones(srv, "udp", user=name)
    r = register(ph, f"sip:{name}@{HOST}", ph.contact, 600)
    assert r.status == 405
    allow = {t.strip().upper() for t in (r.get("Allow") or "").split(",")}
    assert "REGISTER" not in allow and {"SUBSCRIBE", "PUBLISH"} <= allow
    opts = ph.request("OPTIONS", f"sip:{HOST}:{srv.port}")
    assert "REGISTER" not in (opts.get("Allow") or "").upper()


def test_reg_event_subscriber_sees_register(server, phones, transport):
    name = uid("regev")
    aor = f"sip:{name}@{HOST}"
    w = phones(server, transport)
    r, d = w.subscribe(aor, event="reg", expires=600)
    assert r.status == 200
    w.expect_notify(d)  # initial state (possibly empty)
    ph = phones(server, "udp", user=name)
    assert register(ph, aor, ph.contact, 600).status == 200
    n = w.expect_notify(d)
    assert n.get("Content-Type").startswith("application/reginfo+xml")
    assert n.get("Event") == "reg"
    assert xml_attr(n.body, "registration", "aor") == aor
    assert xml_attr(n.body, "registration", "state") == "active"
    assert ph.contact.strip("<>").encode() in n.body
    v1 = int(xml_attr(n.body, "reginfo", "version"))
    # unregistering is reported too, with a higher version
    assert register(ph, aor, "*", 0, cseq=5).status == 200
    n2 = w.expect_notify(d)
    assert int(xml_attr(n2.body, "reginfo", "version")) > v1
    assert b"terminated" in n2.body or xml_attr(n2.body, "registration", "state") != "active"


def test_reg_events_say_registered_then_refreshed_then_unregistered(server, phones):
    """RFC 3680 §5.1: a REGISTER that renews a contact is `refreshed` (a shorter
    Expires too: `shortened` is the registrar's own doing); the removing
    REGISTER's CSeq is reported with `unregistered`."""
    name = uid("regrf")
    aor = f"sip:{name}@{HOST}"
    w = phones(server, "udp")
    _, d = w.subscribe(aor, event="reg", expires=600)
    w.expect_notify(d)
    ph = phones(server, "udp", user=name)
    cid = uid("cid")
    assert register(ph, aor, ph.contact, 600, call_id=cid, cseq=1).status == 200
    assert xml_attr(w.expect_notify(d).body, "contact", "event") == "registered"
    assert register(ph, aor, ph.contact, 120, call_id=cid, cseq=2).status == 200
    assert xml_attr(w.expect_notify(d).body, "contact", "event") == "refreshed"
    assert register(ph, aor, ph.contact, 0, call_id=cid, cseq=3).status == 200
    gone = w.expect_notify(d).body
    assert xml_attr(gone, "contact", "event") == "unregistered"
    assert xml_attr(gone, "contact", "cseq") == "3"
