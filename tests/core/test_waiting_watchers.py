"""RFC 3857 "waiting": a pending watcher whose subscription ended (Kamailio §12.1, §13.4)."""

from __future__ import annotations

import base64
import re

from core_support import Harness, pidf, state

ALICE = "sip:alice@example.com"
CAROL = "sip:carol@example.com"
DAVE = "sip:dave@example.com"


def watchers(body: bytes) -> dict[str, tuple[str, str, str]]:
    """uri -> (id, status, event) of every <watcher> in a watcherinfo document."""
    out = {}
    for attrs, uri in re.findall(rb"<watcher ([^>]*)>([^<]*)</watcher>", body):
        a = dict(re.findall(rb'([\w-]+)="([^"]*)"', attrs))
        out[uri.decode()] = (a[b"id"].decode(), a[b"status"].decode(), a[b"event"].decode())
    return out


def full_winfo(h: Harness) -> bytes:
    """A fresh winfo subscription of the owner: its first NOTIFY is full state."""
    _, wd = h.subscribe(ALICE, ALICE, event="presence.winfo", port=40009)
    [n] = h.take(wd)
    assert b'state="full"' in n.body
    h.subscribe(ALICE, ALICE, event="presence.winfo", expires=0, port=40009, dialog=wd)
    h.take(wd)
    return n.body


def test_pending_watcher_that_leaves_is_waiting():
    h = Harness.make()  # no rules: new watchers are pending (Kamailio's default)
    h.publish(ALICE, pidf(ALICE))
    _, owner = h.subscribe(ALICE, ALICE, event="presence.winfo", port=40005)
    h.take(owner)
    _, carol = h.subscribe(ALICE, CAROL, expires=60)
    assert state(h.take(carol)[0]) == "pending"
    assert h.engine.pres_auth_status(CAROL, ALICE) == 2
    wid, status, _ = watchers(h.take(owner)[-1].body)[CAROL]
    assert status == "pending"

    h.advance(61)  # carol's subscription expires while still pending
    [n] = h.take(owner)
    assert b'state="partial"' in n.body and watchers(n.body)[CAROL] == (wid, "waiting", "timeout")
    assert b'expiration="0"' in n.body  # her subscription is over
    assert h.engine.pres_auth_status(CAROL, ALICE) == 4

    # full state names her as the partial documents did (RFC 3858 §4)
    listed = watchers(full_winfo(h))
    assert listed[CAROL] == (wid, "waiting", "timeout")

    # she subscribes again: pending with a dialog, no longer waiting
    _, carol = h.subscribe(ALICE, CAROL, port=40006)
    assert h.engine.pres_auth_status(CAROL, ALICE) == 2
    listed = watchers(full_winfo(h))
    assert listed[CAROL][1] == "pending" and len(listed) == 1


def test_active_watcher_that_leaves_is_not_waiting():
    h = Harness.make(**{"presence_xml.no_rules_policy": "allow"})
    _, dave = h.subscribe(ALICE, DAVE, expires=60)
    assert state(h.take(dave)[0]) == "active"
    h.advance(61)
    assert DAVE not in watchers(full_winfo(h))
    assert h.engine.pres_auth_status(DAVE, ALICE) == 1


def test_unsubscribing_pending_watcher_is_waiting_and_listed_once():
    h = Harness.make()
    _, owner = h.subscribe(ALICE, ALICE, event="presence.winfo", port=40005)
    h.take(owner)
    _, carol = h.subscribe(ALICE, CAROL)
    h.take(owner)
    h.subscribe(ALICE, CAROL, expires=0, dialog=carol)
    [n] = h.take(owner)
    assert watchers(n.body)[CAROL][1] == "waiting"
    body = full_winfo(h)
    assert body.count(b">sip:carol@example.com<") == 1


def test_pending_decisions_are_purged_after_a_day():
    h = Harness.make()
    _, carol = h.subscribe(ALICE, CAROL, expires=60)
    h.advance(61)
    assert h.engine.pres_auth_status(CAROL, ALICE) == 4
    assert h.engine.purge_pending_watchers(h.now + 3600) == 0  # an hour later: kept
    assert h.engine.purge_pending_watchers(h.now + 86401) == 1
    assert h.engine.pres_auth_status(CAROL, ALICE) == 2  # unknown again
    assert CAROL not in watchers(full_winfo(h))


def test_purge_is_journaled_for_the_database():
    from presenced.core.journal import Journal

    h = Harness.make()
    h.engine.journal = Journal()
    h.subscribe(ALICE, CAROL, expires=60)
    h.engine.journal.take()
    h.engine.purge_pending_watchers(h.now + 86401)
    assert h.engine.journal.auth == {(ALICE, "presence", CAROL): None}


def test_stored_decisions_restore_as_waiting_with_their_age():
    from presenced.runtime.persistence import restore_watchers
    from presenced.storage.rows import WatcherRow

    h = Harness.make()
    h.engine.wall_offset = 1_700_000_000.0 - h.now  # wall clock = 1.7e9 at h.now
    rows = [
        WatcherRow(ALICE, "carol", "example.com", "presence", 2, None, 1_700_000_000 - 3600),
        WatcherRow(ALICE, "dave", "example.com", "presence", 2, None, 1_700_000_000 - 86400 - 60),
        WatcherRow(ALICE, "erin", "example.com", "presence", 4, None, 1_700_000_000),  # Kamailio's "waiting" code
    ]
    restore_watchers(h.engine, rows)
    assert h.engine.pres_auth_status(CAROL, ALICE) == 4
    assert h.engine.pres_auth_status("sip:erin@example.com", ALICE) == 4
    assert h.engine.purge_pending_watchers(h.now) == 1  # dave was pending for more than a day
    listed = watchers(full_winfo(h))
    assert set(listed) == {CAROL, "sip:erin@example.com"}
    # their subscriptions ended before the restart: Kamailio's id (base64 of the URI)
    assert listed[CAROL][0] == base64.b64encode(CAROL.encode()).decode()
