"""Digest authentication over real sockets, credentials from the subscriber table."""

from __future__ import annotations

import pathlib
import sys

import pytest
from e2e_support import Phone, cli, pidf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "auth"))
from digestref import authorization, parse_challenge  # noqa: E402

URI = "sip:alice@127.0.0.1"


@pytest.fixture
def auth_server(spawn, tmp_path):
    db = f"sqlite://{tmp_path}/auth.db"
    r = cli("user", "add", "alice@127.0.0.1", "s3cret", "--db-url", db)
    assert r.returncode == 0, r.stderr
    return spawn("--db-url", db, "--set", "auth.require=PUBLISH,SUBSCRIBE")


def _challenge(resp) -> dict[str, str]:
    assert resp.status == 401
    values = resp.get_all("www-authenticate")
    assert values, "401 without WWW-Authenticate"
    md5 = [v for v in values if "MD5" in v and "SHA" not in v] or values
    return parse_challenge(md5[0])


def test_publish_needs_credentials_and_accepts_correct_ones(auth_server):
    phone = Phone(auth_server.port, user="alice")
    body = pidf(URI)
    chal = _challenge(phone.publish(URI, body))
    good = authorization(chal, "alice", "s3cret", "PUBLISH", URI, alg="MD5")
    resp = phone.publish(URI, body, extra=[("Authorization", good)], from_uri=URI)
    assert resp.status == 200 and resp.get("sip-etag")
    # the same nonce-count again is a replay
    again = phone.publish(URI, body, extra=[("Authorization", good)], from_uri=URI)
    assert again.status in (401, 403)


def test_only_md5_is_offered_unless_configured(spawn, tmp_path):
    """baresip (libre) answers no 401 that offers an algorithm it lacks, so the
    default challenge is MD5 alone (as Kamailio's); auth.algorithms adds
    SHA-256, in the order given (RFC 8760 §2.4), and a SHA-256 answer works."""
    db = f"sqlite://{tmp_path}/auth.db"
    assert cli("user", "add", "alice@127.0.0.1", "s3cret", "--db-url", db).returncode == 0
    phone = Phone(spawn("--db-url", db, "--set", "auth.require=PUBLISH").port, user="alice")
    values = phone.publish(URI, pidf(URI)).get_all("www-authenticate")
    assert [parse_challenge(v).get("algorithm") for v in values] == ["MD5"]
    srv = spawn("--db-url", db, "--set", "auth.require=PUBLISH", "--set", "auth.algorithms=SHA-256,MD5")
    phone = Phone(srv.port, user="alice")
    values = phone.publish(URI, pidf(URI)).get_all("www-authenticate")
    chals = [parse_challenge(v) for v in values]
    assert [c.get("algorithm") for c in chals] == ["SHA-256", "MD5"]
    good = authorization(chals[0], "alice", "s3cret", "PUBLISH", URI, alg="SHA-256")
    assert phone.publish(URI, pidf(URI), extra=[("Authorization", good)], from_uri=URI).status == 200


def test_wrong_password_is_refused(auth_server):
    phone = Phone(auth_server.port, user="alice")
    chal = _challenge(phone.publish(URI, pidf(URI)))
    bad = authorization(chal, "alice", "wrong", "PUBLISH", URI, alg="MD5")
    assert phone.publish(URI, pidf(URI), extra=[("Authorization", bad)], from_uri=URI).status == 401


def test_authenticated_user_cannot_publish_for_someone_else(auth_server):
    phone = Phone(auth_server.port, user="alice")
    other = "sip:bob@127.0.0.1"
    chal = _challenge(phone.publish(other, pidf(other), from_uri=URI))
    cred = authorization(chal, "alice", "s3cret", "PUBLISH", other, alg="MD5")
    assert phone.publish(other, pidf(other), extra=[("Authorization", cred)], from_uri=URI).status == 403


def test_options_needs_no_credentials(auth_server):
    phone = Phone(auth_server.port, user="x")
    assert phone.request("OPTIONS", "sip:127.0.0.1").status == 200


def test_auth_without_database_is_a_startup_error(tmp_path):
    r = cli("serve", "--listen", "udp:127.0.0.1:0", "--db-url", "memory", "--set", "auth.require=PUBLISH")
    assert r.returncode == 2
    assert "subscriber" in r.stderr


def _publish_as(phone, user: str, password: str):
    uri = f"sip:{user}@127.0.0.1"
    chal = _challenge(phone.publish(uri, pidf(uri), from_uri=uri))
    cred = authorization(chal, user, password, "PUBLISH", uri, alg="MD5")
    return phone.publish(uri, pidf(uri), extra=[("Authorization", cred)], from_uri=uri)


def test_user_added_while_running_can_publish_at_once(auth_server, tmp_path):
    """No waiting for the periodic credentials reload: an unknown username is looked up."""
    import time

    r = cli("user", "add", "dave@127.0.0.1", "pw-dave", "--db-url", f"sqlite://{tmp_path}/auth.db")
    assert r.returncode == 0, r.stderr
    started = time.monotonic()
    dave = Phone(auth_server.port, user="dave")
    assert _publish_as(dave, "dave", "pw-dave").status == 200
    assert time.monotonic() - started < 1.0


def test_unknown_username_is_not_looked_up_again_for_a_few_seconds(auth_server, tmp_path):
    import time

    phone = Phone(auth_server.port, user="carol")
    failed_at = time.monotonic()
    assert _publish_as(phone, "carol", "pw-carol").status == 401  # not a user yet
    r = cli("user", "add", "carol@127.0.0.1", "pw-carol", "--db-url", f"sqlite://{tmp_path}/auth.db")
    assert r.returncode == 0, r.stderr
    if time.monotonic() - failed_at < 4:
        assert _publish_as(phone, "carol", "pw-carol").status == 401  # negative cache: no new lookup yet
    time.sleep(max(0.0, failed_at + 5.3 - time.monotonic()))
    resp = _publish_as(phone, "carol", "pw-carol")
    assert resp.status == 200 and resp.get("sip-etag")


def test_unknown_users_are_refused_quickly(auth_server):
    import time

    phone = Phone(auth_server.port, user="x")
    started = time.monotonic()
    for i in range(5):
        assert _publish_as(phone, f"ghost{i}", "pw").status in (401, 403)
    assert time.monotonic() - started < 3
    # alice (cached) is unaffected
    assert _publish_as(Phone(auth_server.port, user="alice"), "alice", "s3cret").status == 200


def test_changed_password_works_at_once_and_the_old_one_stops(auth_server, tmp_path):
    """A wrong password for a cached user makes the server look the user up once
    (a password changed with `presenced user passwd` is not refused for 30 s)."""
    import time

    alice = Phone(auth_server.port, user="alice")
    assert _publish_as(alice, "alice", "s3cret").status == 200  # cached
    r = cli("user", "passwd", "alice@127.0.0.1", "n3w-pass", "--db-url", f"sqlite://{tmp_path}/auth.db")
    assert r.returncode == 0, r.stderr
    started = time.monotonic()
    assert _publish_as(alice, "alice", "n3w-pass").status == 200
    assert time.monotonic() - started < 1.0
    assert _publish_as(alice, "alice", "s3cret").status == 401
