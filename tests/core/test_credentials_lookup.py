"""An unknown digest username waits for the runtime's lookup instead of a 401."""

from __future__ import annotations

import pathlib
import sys

from core_support import Harness, pidf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "auth"))
from digestref import authorization, parse_challenge  # noqa: E402

from presenced.core import server as core_server  # noqa: E402
from presenced.storage.rows import SubscriberRow  # noqa: E402

URI = "sip:carol@example.com"


def setup():
    h = Harness.make(**{"auth.require": "PUBLISH", "auth.realm": "example.com", "presence_xml.force_active": 1})
    asked: list[tuple[str, str]] = []
    answer = {"value": True}

    def miss(user: str, domain: str) -> bool:
        asked.append((user, domain))
        return answer["value"]

    h.core.credentials_miss = miss
    return h, asked, answer


def signed_publish(h: Harness, user: str, password: str, port: int = 40000) -> bytes:
    uri = f"sip:{user}@example.com"
    r = h.publish(uri, pidf(uri), port=port)
    assert r.status == 401
    chal = parse_challenge(r.get_all("www-authenticate")[0])
    cred = authorization(chal, user, password, "PUBLISH", uri, alg=chal.get("algorithm", "MD5"))
    return Harness.build("PUBLISH", uri, [("Event", "presence"), ("Expires", "60"), ("Authorization", cred),
                                          ("Content-Type", "application/pidf+xml")], pidf(uri), from_uri=uri, port=port)


def test_request_waits_for_the_lookup_and_then_succeeds():
    h, asked, _ = setup()
    data = signed_publish(h, "carol", "pw")
    assert h.send(data) is None  # held: no 401 while the database is asked
    assert asked == [("carol", "example.com")]
    assert h.send(data) is None  # a retransmission is absorbed, not looked up again
    assert asked == [("carol", "example.com")]
    h.core.credentials_fetched("carol", "example.com", SubscriberRow("carol", "example.com", password="pw"), h.now)
    r = h._drain()
    assert r is not None and r.status == 200 and r.get("sip-etag")
    # cached now: the next request is not held
    assert h.send(signed_publish(h, "carol", "pw")).status == 200
    assert len(asked) == 1


def test_unknown_after_lookup_is_401_and_not_held_twice():
    h, asked, _ = setup()
    data = signed_publish(h, "nobody", "pw")
    assert h.send(data) is None
    h.core.credentials_fetched("nobody", "example.com", None, h.now)
    r = h._drain()
    assert r is not None and r.status == 401
    assert len(asked) == 1  # the resumed request did not start a second lookup


def test_refused_lookup_answers_at_once():
    h, asked, answer = setup()
    answer["value"] = False  # rate limit / negative cache in the runtime
    r = h.send(signed_publish(h, "ghost", "pw"))
    assert r is not None and r.status == 401 and asked == [("ghost", "example.com")]


def test_no_credentials_means_plain_challenge_without_lookup():
    h, asked, _ = setup()
    assert h.publish(URI, pidf(URI)).status == 401
    assert asked == []


def test_parked_requests_are_bounded(monkeypatch):
    monkeypatch.setattr(core_server, "MAX_PARKED", 2)
    h, asked, _ = setup()
    assert h.send(signed_publish(h, "u1", "pw", port=40010), 40010) is None
    assert h.send(signed_publish(h, "u2", "pw", port=40011), 40011) is None
    r = h.send(signed_publish(h, "u3", "pw", port=40012), 40012)
    assert r is not None and r.status == 401  # over the limit: no waiting
    h.core.credentials_fetched("u1", "example.com", None, h.now)
    h._drain()
    assert h.send(signed_publish(h, "u4", "pw", port=40013), 40013) is None  # room again
