"""The compact ways the engine holds its state (bench/state_memory.py) must
not change what watchers and publishers see: flat per-presentity groups,
expiry timers without handles (a refresh leaves the old deadline behind),
and the composed body kept only when several watchers share it."""

from __future__ import annotations

import pytest
from core_support import Harness, pidf, state

from presenced.core.state import Groups

ALICE = "sip:alice@example.com"


def test_groups_hold_one_record_bare_and_several_in_a_dict():
    class Rec:
        def __init__(self, k: str) -> None:
            self.k = k

    g = Groups(lambda r: r.k)
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    g.add("p", "a", a)
    assert g.records("p") == (a,) and g.get("p") == {"a": a} and g.count("p") == 1
    g.add("p", "b", b)
    g.add("p", "c", c)
    assert list(g.records("p")) == [a, b, c] and g.count("p") == 3
    g.discard("p", "b", c)  # not the record under "b": kept
    assert g.count("p") == 3
    g.discard("p", "b")
    g.discard("p", "a", a)
    assert g.records("p") == (c,) and "p" in g
    b.k = "b2"
    g.rekey("p", "b", "b2", b)  # not held: added
    assert g.get("p") == {"c": c, "b2": b}
    g.discard("p", "c")
    g.discard("p", "b2", b)
    assert "p" not in g and g.records("p") == () and g.get("p", {}) == {}


def test_refreshed_publication_outlives_its_first_deadline():
    h = Harness.make(**{"presence_xml.force_active": 1})
    r = h.publish(ALICE, pidf(ALICE, note="one"), expires=60)
    _, d = h.subscribe(ALICE, "sip:bob@example.com", expires=600)
    h.take(d)
    h.advance(30)
    r = h.publish(ALICE, b"", etag=r.get("sip-etag"), expires=60)
    assert r.status == 200
    h.advance(31)  # past the first deadline (60 s), before the second (90 s)
    assert h.take(d) == []
    assert h.engine.etags.get(r.get("sip-etag")) is not None
    h.advance(30)  # past the second: gone, and the watcher is told
    assert h.engine.etags.get(r.get("sip-etag")) is None
    (n,) = h.take(d)
    assert state(n) == "active" and b"one" not in n.body


def test_refreshed_subscription_outlives_its_first_deadline_and_a_removed_one_stays_quiet():
    h = Harness.make(**{"presence_xml.force_active": 1})
    h.publish(ALICE, pidf(ALICE))
    _, d1 = h.subscribe(ALICE, "sip:bob@example.com", expires=60)
    _, d2 = h.subscribe(ALICE, "sip:carol@example.com", expires=60, port=40002)
    h.take(d2)
    h.advance(30)
    h.subscribe(ALICE, "sip:bob@example.com", expires=60, dialog=d1)
    h.subscribe(ALICE, "sip:carol@example.com", expires=0, dialog=d2)  # ended now
    h.take(d1)
    assert [state(n) for n in h.take(d2)] == ["terminated"]
    h.advance(31)  # both first deadlines pass: nothing happens
    assert h.take(d1) == [] and h.take(d2) == []
    assert h.engine.pres_has_subscribers(ALICE, "presence")
    h.advance(30)
    assert [state(n) for n in h.take(d1)] == ["terminated"]
    assert not h.engine.pres_has_subscribers(ALICE, "presence")


def test_composed_body_is_kept_only_when_watchers_share_it():
    h = Harness.make(**{"presence_xml.force_active": 1})
    key = (ALICE, "presence")
    h.publish(ALICE, pidf(ALICE, note="first"))
    _, d1 = h.subscribe(ALICE, "sip:bob@example.com")
    assert key not in h.engine._composed
    _, d2 = h.subscribe(ALICE, "sip:carol@example.com", port=40002)
    assert key in h.engine._composed
    h.take(d1)
    h.take(d2)
    h.publish(ALICE, pidf(ALICE, note="second"))
    (n1,), (n2,) = h.take(d1), h.take(d2)
    assert n1.body == n2.body and b"second" in n1.body


def test_ended_records_are_freed_before_their_old_deadline():
    """An un-SUBSCRIBEd dialog and a removed publication must not live on
    (GC-tracked, in memory) until the Expires they once had: under churn
    that is every dialog of the last Expires seconds."""
    import gc
    import inspect

    h = Harness.make(**{"presence_xml.force_active": 1})
    r = h.publish(ALICE, pidf(ALICE), expires=600)
    etag = r.get("sip-etag")
    pub = h.engine.etags[etag]
    _, d = h.subscribe(ALICE, "sip:bob@example.com", expires=600)
    (sub,) = list(h.engine.subs_by_dialog.values())
    h.subscribe(ALICE, "sip:bob@example.com", expires=0, dialog=d)
    assert h.publish(ALICE, b"", etag=etag, expires=0).status == 200
    assert not h.engine.subs_by_dialog and not h.engine.etags
    gc.collect()
    assert [o for o in gc.get_referrers(sub) if not inspect.isframe(o)] == []
    assert [o for o in gc.get_referrers(pub) if not inspect.isframe(o)] == []
    assert state(h.take(d)[-1]) == "terminated"
    h.advance(601)  # the old deadlines pass quietly
    assert h.take(d) == []


def test_ended_and_refreshed_records_leave_no_deadline_to_wake_up_for():
    """A record's old expiry entry (un-SUBSCRIBEd dialog, removed or
    refreshed publication) must not wake the server at its old time: the
    core's next deadline is the live record's, or a lax clean-up timer."""
    h = Harness.make(**{"presence_xml.force_active": 1})
    start = h.now
    r = h.publish(ALICE, pidf(ALICE), expires=600)
    etag = r.get("sip-etag")
    _, d = h.subscribe(ALICE, "sip:bob@example.com", expires=300)
    h.take(d)
    h.subscribe(ALICE, "sip:bob@example.com", expires=0, dialog=d)
    h.take(d)
    h.advance(100)
    assert h.publish(ALICE, pidf(ALICE), etag=etag, expires=900).status == 200  # refreshed: 1000 s
    h.advance(60)  # the transactions' lax Timers J/K are done by now
    assert h.core.next_deadline() == pytest.approx(start + 1000)  # not 300 (the dialog's) nor 600 (the old publication's)
    new_etag = next(iter(h.engine.etags))
    assert h.publish(ALICE, b"", etag=new_etag, expires=0).status == 200
    h.advance(60)
    assert h.core.next_deadline() is None
