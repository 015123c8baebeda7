"""`presenced user add|passwd|remove`: Kamailio's subscriber table from the command line."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3

import pytest
from click.testing import CliRunner

from presenced.cli_admin import subscriber_row, user


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        return CliRunner()  # click 8.2+: stderr is always separate


@pytest.fixture
def db(tmp_path):
    return tmp_path / "users.db"


def run(db, *args, input=None):
    args = [*args, "--db-url", f"sqlite://{db}"]
    return runner().invoke(user, args, input=input, catch_exceptions=False)


def rows(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT username, domain, password, ha1, ha1b FROM subscriber ORDER BY id").fetchall()
    finally:
        conn.close()


def expected(user_: str, domain: str, password: str) -> tuple:
    return (
        user_,
        domain,
        password,
        md5(f"{user_}:{domain}:{password}"),
        md5(f"{user_}@{domain}:{domain}:{password}"),
    )


# --- add ---------------------------------------------------------------------------------


def test_add_stores_password_ha1_and_ha1b(db):
    r = run(db, "add", "alice@example.com", "s3cret")
    assert r.exit_code == 0, r.stderr
    assert "added alice@example.com" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr
    assert rows(db) == [expected("alice", "example.com", "s3cret")]
    # hashes as kamctl computes them, spelled out
    [(_, _, _, ha1, ha1b)] = rows(db)
    assert ha1 == hashlib.md5(b"alice:example.com:s3cret").hexdigest()
    assert ha1b == hashlib.md5(b"alice@example.com:example.com:s3cret").hexdigest()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT table_version FROM version WHERE table_name = 'subscriber'").fetchall() == [(7,)]
    finally:
        conn.close()


def test_add_prompts_with_confirmation(db):
    r = run(db, "add", "bob@example.org", input="pw-one\npw-one\n")
    assert r.exit_code == 0, r.stderr
    assert "Password" in r.output and "pw-one" not in r.output  # hidden input
    assert rows(db) == [expected("bob", "example.org", "pw-one")]


def test_add_prompt_repeats_until_both_entries_match(db):
    r = run(db, "add", "bob@example.org", input="first\nsecond\nthird\nthird\n")
    assert r.exit_code == 0, r.stderr
    assert "do not match" in r.output
    assert rows(db) == [expected("bob", "example.org", "third")]


def test_add_prompt_at_end_of_input_aborts(db):
    r = run(db, "add", "bob@example.org", input="")
    assert r.exit_code == 1
    assert not rows(db)


def test_add_of_an_existing_user_suggests_passwd(db):
    assert run(db, "add", "alice@example.com", "one").exit_code == 0
    r = run(db, "add", "alice@example.com", "two")
    assert r.exit_code == 1
    assert "alice@example.com already exists" in r.stderr and "presenced user passwd alice@example.com" in r.stderr
    assert rows(db) == [expected("alice", "example.com", "one")]
    # checked before asking for a password
    r = run(db, "add", "alice@example.com", input="")
    assert r.exit_code == 1 and "already exists" in r.stderr and "Password" not in r.output


def test_same_user_in_two_domains(db):
    assert run(db, "add", "alice@a.example", "pa").exit_code == 0
    assert run(db, "add", "alice@b.example", "pb").exit_code == 0
    assert rows(db) == [expected("alice", "a.example", "pa"), expected("alice", "b.example", "pb")]


def test_sip_prefix_and_domain_case(db):
    r = run(db, "add", "sip:Alice@Example.COM", "pw")
    assert r.exit_code == 0, r.stderr
    assert "added Alice@example.com" in r.stdout
    assert rows(db) == [expected("Alice", "example.com", "pw")]  # user part is case-sensitive
    assert run(db, "add", "alice@example.com", "pw").exit_code == 0
    assert run(db, "add", "SIPS:Alice@example.com", "pw").exit_code == 1  # same account
    assert run(db, "add", "carol@[2001:db8::1]", "pw").exit_code == 0
    assert run(db, "add", "dave%40home+1@192.0.2.1", "pw").exit_code == 0


def test_non_ascii_password(db):
    assert run(db, "add", "eve@example.com", "pässwörd").exit_code == 0
    [(_, _, password, ha1, _)] = rows(db)
    assert password == "pässwörd" and ha1 == hashlib.md5("eve:example.com:pässwörd".encode()).hexdigest()


# --- passwd ------------------------------------------------------------------------------


def test_passwd_changes_password_and_hashes(db):
    assert run(db, "add", "alice@example.com", "old").exit_code == 0
    assert run(db, "add", "bob@example.com", "bobs").exit_code == 0
    r = run(db, "passwd", "alice@example.com", "new")
    assert r.exit_code == 0, r.stderr
    assert "alice@example.com" in r.stdout and "new" not in r.stdout.replace("alice@example.com", "")
    assert rows(db) == [expected("alice", "example.com", "new"), expected("bob", "example.com", "bobs")]


def test_passwd_prompts_with_confirmation(db):
    assert run(db, "add", "alice@example.com", "old").exit_code == 0
    r = run(db, "passwd", "alice@example.com", input="n3w\nn3w\n")
    assert r.exit_code == 0, r.stderr
    assert "n3w" not in r.output
    assert rows(db) == [expected("alice", "example.com", "n3w")]


def test_passwd_of_a_missing_user(db):
    r = run(db, "passwd", "nobody@example.com", "x")
    assert r.exit_code == 1
    assert "nobody@example.com" in r.stderr and "no such user" in r.stderr and "user add" in r.stderr
    assert rows(db) == []


def test_passwd_of_a_row_kamctl_wrote(db):
    """A row with only hashes (Kamailio without clear-text passwords) gets all three."""
    assert run(db, "add", "alice@example.com", "x").exit_code == 0
    conn = sqlite3.connect(db)
    conn.execute("UPDATE subscriber SET password = '', ha1 = 'aa', ha1b = 'bb'")
    conn.commit()
    conn.close()
    assert run(db, "passwd", "alice@example.com", "fresh").exit_code == 0
    assert rows(db) == [expected("alice", "example.com", "fresh")]


# --- remove ------------------------------------------------------------------------------


def test_remove(db):
    assert run(db, "add", "alice@example.com", "a").exit_code == 0
    assert run(db, "add", "bob@example.com", "b").exit_code == 0
    r = run(db, "remove", "alice@example.com")
    assert r.exit_code == 0, r.stderr
    assert "removed alice@example.com" in r.stdout
    assert rows(db) == [expected("bob", "example.com", "b")]
    r = run(db, "remove", "alice@example.com")
    assert r.exit_code == 1
    assert "alice@example.com" in r.stderr and "no such user" in r.stderr
    assert run(db, "remove", "alice@example.org").exit_code == 1
    assert rows(db) == [expected("bob", "example.com", "b")]


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "account",
    [
        "alice",
        "@example.com",
        "alice@",
        "alice@b@example.com",
        "al ice@example.com",
        "alice@exa mple.com",
        "alice@example.com:5060",
        "al:ice@example.com",
        "alice@-example.com",
        "tel:+15551234@example.com",
        "a" * 65 + "@example.com",
        "alice@" + "d" * 65,
        "",
    ],
)
@pytest.mark.parametrize("command", ["add", "passwd", "remove"])
def test_bad_account_exits_2_naming_it(db, command, account):
    args = [command, account] + (["pw"] if command != "remove" else [])
    r = run(db, *args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert repr(account) in r.stderr and r.stderr.startswith("presenced: ")
    assert not db.exists()  # checked before the database is opened


@pytest.mark.parametrize("password, message", [("", "must not be empty"), ("p" * 65, "limited to 64")])
def test_bad_password_exits_2(db, password, message):
    r = run(db, "add", "alice@example.com", password)
    assert r.exit_code == 2 and message in r.stderr
    assert rows(db) == []


def test_memory_database_is_refused(db):
    r = runner().invoke(user, ["add", "alice@example.com", "pw", "--db-url", "memory"])
    assert r.exit_code == 2 and "need a database" in r.stderr


def test_config_file_and_set(tmp_path):
    path = tmp_path / "cfg.db"
    cfg = tmp_path / "presenced.toml"
    cfg.write_text(f'[db]\nurl = "sqlite://{path}"\n')
    r = runner().invoke(user, ["add", "alice@example.com", "pw", "--config", str(cfg)])
    assert r.exit_code == 0, r.stderr
    other = tmp_path / "set.db"
    r = runner().invoke(user, ["add", "bob@example.com", "pw", "--set", f"db.url=sqlite://{other}"])
    assert r.exit_code == 0, r.stderr
    assert rows(path) == [expected("alice", "example.com", "pw")]
    assert rows(other) == [expected("bob", "example.com", "pw")]


def test_storage_error_exits_2(tmp_path):
    r = runner().invoke(user, ["add", "alice@example.com", "pw", "--db-url", f"sqlite://{tmp_path}/no/such/dir/x.db"])
    assert r.exit_code == 2 and "storage" in r.stderr


def test_help_lists_commands():
    r = runner().invoke(user, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.stdout for c in ("add", "passwd", "remove"))


# --- what the server reads --------------------------------------------------------------


def test_server_credentials_match(db):
    """The row verifies against the server's digest code, with and without the clear text."""
    from presenced.auth import Credentials
    from presenced.auth.digest import compute_ha1
    from presenced.storage import Store

    assert subscriber_row("alice", "example.com", "pw").ha1 == compute_ha1("alice", "example.com", "pw")
    assert run(db, "add", "alice@example.com", "pw").exit_code == 0

    async def load():
        async with Store.from_url(f"sqlite://{db}") as store:
            return await store.load_subscribers()

    [row] = asyncio.run(load())
    hashes_only = Credentials(row.username, row.domain, ha1=row.ha1, ha1b=row.ha1b)
    assert hashes_only.ha1_for("alice", "example.com", "MD5") == compute_ha1("alice", "example.com", "pw")
    assert hashes_only.ha1_for("alice@example.com", "example.com", "MD5") == compute_ha1(
        "alice@example.com", "example.com", "pw"
    )
