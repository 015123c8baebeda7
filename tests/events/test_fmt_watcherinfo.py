"""watcherinfo rendering (RFC 3858)."""

from __future__ import annotations

import pytest
from formats_support import DATA
from lxml import etree

from presenced.events.formats.watcherinfo import NS_WATCHERINFO, WatcherEntry, render_watcherinfo
from presenced.events.formats.xml import parse_xml

W = f"{{{NS_WATCHERINFO}}}"
SCHEMA = etree.XMLSchema(etree.parse(str(DATA / "watcherinfo.xsd")))


def watchers_of(out: bytes) -> list:
    return list(parse_xml(out).iter(W + "watcher"))


def test_full_document_is_schema_valid():
    out = render_watcherinfo(
        0,
        "full",
        "sip:alice@example.com",
        "presence",
        [
            WatcherEntry("c1", "sip:bob@example.com", "active", "subscribe", "Bob", 3600, 12),
            WatcherEntry("c2", "sip:carol@example.com", "pending", "subscribe"),
            WatcherEntry("d3", "sip:dave@example.com", "terminated", "timeout"),
            WatcherEntry("w4", "sip:eve@example.com", "waiting", "giveup", duration_subscribed=0),
        ],
    )
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    SCHEMA.assertValid(etree.fromstring(out))
    root = parse_xml(out)
    assert (root.get("version"), root.get("state")) == ("0", "full")
    (wlist,) = root.iterchildren(W + "watcher-list")
    assert (wlist.get("resource"), wlist.get("package")) == ("sip:alice@example.com", "presence")
    first = watchers_of(out)[0]
    assert first.attrib == {
        "id": "c1",
        "status": "active",
        "event": "subscribe",
        "display-name": "Bob",
        "expiration": "3600",
        "duration-subscribed": "12",
    }
    assert first.text == "sip:bob@example.com"


def test_empty_partial_document_is_schema_valid():
    out = render_watcherinfo(5, "partial", "sip:alice@example.com", "presence", [])
    SCHEMA.assertValid(etree.fromstring(out))
    assert parse_xml(out).get("version") == "5"


def test_escapes_markup_in_uris_ids_and_names():
    nasty = 'sip:<script>&"x"@example.com'
    out = render_watcherinfo(
        1,
        "full",
        'sip:a&b"<c>@example.com',
        'presence"&<',
        [WatcherEntry('id"<&>', nasty, "active", "approved", display_name='"Mallory" <&>\t\n')],
    )
    SCHEMA.assertValid(etree.fromstring(out))
    root = parse_xml(out)
    wlist = root[0]
    assert wlist.get("resource") == 'sip:a&b"<c>@example.com'
    assert wlist.get("package") == 'presence"&<'
    (watcher,) = watchers_of(out)
    assert watcher.text == nasty
    assert watcher.get("id") == 'id"<&>'
    assert watcher.get("display-name") == '"Mallory" <&>\t\n'
    assert b"<script>" not in out


def test_characters_xml_cannot_carry_are_replaced():
    out = render_watcherinfo(
        0, "full", "sip:a@b", "presence", [WatcherEntry("i", "sip:\x00\x1b@b", "active", "subscribe")]
    )
    assert watchers_of(out)[0].text == "sip:\ufffd\ufffd@b"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": "complete"},
        {"version": -1},
        {"watchers": [WatcherEntry("i", "sip:x@y", "online", "subscribe")]},
        {"watchers": [WatcherEntry("i", "sip:x@y", "active", "poke")]},
        {"watchers": [WatcherEntry("i", "sip:x@y", "active", "subscribe", expiration=-5)]},
    ],
)
def test_invalid_values_raise(kwargs):
    args = {"version": 0, "state": "full", "resource": "sip:a@b", "package": "presence", "watchers": []}
    args.update(kwargs)
    with pytest.raises(ValueError):
        render_watcherinfo(**args)
