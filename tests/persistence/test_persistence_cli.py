"""`presenced db init` and start-up on an unreachable database (exit status 2, URL without password)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from persist_support import Database
from sipclient import free_port

PASSWORD = "Top-s3cret"


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "presenced", *args], capture_output=True, text=True, timeout=timeout)


def unreachable_urls(tmp_path) -> list[tuple[str, str]]:
    """(url, what the message must show instead) for each backend; nothing listens on `port`."""
    port = free_port()
    return [
        (f"postgresql://presence:{PASSWORD}@127.0.0.1:{port}/kamailio", f"postgresql://presence@127.0.0.1:{port}/kamailio"),
        (f"postgres://presence:{PASSWORD}@127.0.0.1:{port}/kamailio", f"postgres://presence@127.0.0.1:{port}/kamailio"),
        (f"mysql://kamailio:{PASSWORD}@127.0.0.1:{port}/kamailio", f"mysql://kamailio@127.0.0.1:{port}/kamailio"),
        (f"sqlite://{tmp_path}/no/such/dir/x.db", f"sqlite://{tmp_path}/no/such/dir/x.db"),
    ]


@pytest.mark.parametrize("command", ["serve", "db init"])
def test_unreachable_database_exits_2_naming_the_url(command, tmp_path):
    for url, shown in unreachable_urls(tmp_path):
        args = [*command.split(), "--db-url", url]
        if command == "serve":
            port = free_port()
            args += ["--listen", f"udp:127.0.0.1:{port}"]
        r = cli(*args)
        assert r.returncode == 2, (url, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("presenced: ") and shown in lines[0], lines[0]
        assert PASSWORD not in r.stderr + r.stdout


def test_db_init_creates_missing_tables(backend, tmp_path):
    db = Database.open(backend, tmp_path)
    try:
        args = ["db", "init", "--db-url", db.url, *db.set_args()]
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        names = db.names
        for key in ("presentity", "active_watchers", "watchers", "xcap", "ext"):
            assert f"{names[key]}: created" in r.stdout, r.stdout
        assert db.fetch("SELECT table_version FROM {version} WHERE table_name = ?", (names["presentity"],)) == [(5,)]
        assert db.count("presentity") == 0

        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert "0 table(s) created" in r.stdout
        for key in ("presentity", "active_watchers", "watchers", "xcap", "ext"):
            assert f"{names[key]}: exists" in r.stdout
    finally:
        db.cleanup()


def test_db_init_on_a_kamailio_database_adds_only_presenced_table(tmp_path):
    from test_persistence_kamailio import assert_still_kamailio, kamailio_db, schema_snapshot

    path = tmp_path / "k.db"
    url = kamailio_db(str(path))
    before = schema_snapshot(path)
    r = cli("db", "init", "--db-url", url)
    assert r.returncode == 0, r.stderr
    assert "presenced_active_watchers_ext: created" in r.stdout
    assert "presentity: exists (version 5)" in r.stdout
    assert_still_kamailio(before, schema_snapshot(path))


def test_db_init_refuses_a_wrong_table_version(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE version (id INTEGER PRIMARY KEY, table_name VARCHAR(32) NOT NULL, table_version INTEGER DEFAULT 0 NOT NULL);"
        "INSERT INTO version (table_name, table_version) VALUES ('version', 1), ('presentity', 4);"
        "CREATE TABLE presentity (id INTEGER PRIMARY KEY, username VARCHAR(64));"
    )
    conn.commit()
    conn.close()
    r = cli("db", "init", "--db-url", f"sqlite://{path}")
    assert r.returncode == 2
    assert "presentity" in r.stderr and "version 4" in r.stderr
