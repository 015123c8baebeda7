"""`presenced rpc` against a live server (click's CliRunner)."""

from __future__ import annotations

import json

import pytest
from api_support import HOST, pidf, uid
from click.testing import CliRunner
from sipclient import SipClient, free_port

from presenced.cli_rpc import format_result, normalize_url, rpc, typed_param


@pytest.fixture
def run(live):
    runner = CliRunner()

    def invoke(*args: str, token: str | None = "default", env: dict | None = None):
        argv = ["--url", live.base]
        if token == "default":
            argv += ["--token", live.token]
        elif token is not None:
            argv += ["--token", token]
        return runner.invoke(rpc, [*argv, *args], env=env or {}, catch_exceptions=False)

    return invoke


@pytest.fixture
def published(live):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    with SipClient(live.port, user=alice) as ua:
        assert ua.publish(aor, pidf(aor, note="cli")).status == 200
    return alice, aor


def test_list_methods(run):
    r = run("system.listMethods")
    assert r.exit_code == 0, r.output
    assert "presence.watcher_list" in r.output.splitlines()


def test_json_output(run, published):
    alice, _ = published
    r = run("--json", "presence.presentity_show", "basic", alice, "*")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["user"] == alice and rows[0]["event"] == "presence"


def test_table_output(run, published):
    alice, _ = published
    r = run("presence.presentity_show", "basic", alice, HOST)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["user", "domain", "event", "etag", "sender", "expires"]
    assert lines[2].startswith(alice)
    assert lines[-1] == "(1 row)"
    # wide rows (full bodies) print one block per record
    r = run("presence.presentity_show", "full", alice, HOST)
    assert r.exit_code == 0
    assert "-[ 1 ]" in r.output and "body" in r.output and "cli" in r.output


def test_mapping_output_and_int_params(run, published):
    _, aor = published
    r = run("presence.refreshWatchers", aor, "presence", "1")  # "1" is sent as a number
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["notified", "0"]
    r = run("presence.counters")
    assert r.exit_code == 0
    assert "sip:" in r.output and "PUBLISH" in r.output


def test_empty_list(run):
    r = run("presence.watcher_list", "basic", f"sip:nobody@{HOST}")
    assert r.exit_code == 0 and r.output.strip() == "(no rows)"


def test_rpc_error_exit_1(run):
    r = run("presence.nope")
    assert r.exit_code == 1
    assert "error -32601" in r.output
    r = run("--json", "presence.watcher_list", "basic")
    assert r.exit_code == 1
    assert json.loads(r.output.strip())["code"] == -32602


def test_token_from_env_and_bad_token(run, live):
    r = run("core.version", token=None, env={"PRESENCED_RPC_TOKEN": live.token})
    assert r.exit_code == 0 and r.output.startswith("presenced ")
    r = run("core.version", token="wrong")
    assert r.exit_code == 1 and "unauthorized" in r.output
    r = run("core.version", token=None)
    assert r.exit_code == 1 and "401" in r.output


def test_connection_refused_exit_1():
    port = free_port()
    r = CliRunner().invoke(rpc, ["--url", f"127.0.0.1:{port}", "core.version"])
    assert r.exit_code == 1
    assert "cannot reach" in r.output and str(port) in r.output


def test_url_and_token_from_config(tmp_path, live):
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[http]\nlisten = "{HOST}:{live.server.http.port}"\ntoken = "{live.token}"\n')
    r = CliRunner().invoke(rpc, ["--config", str(cfg), "core.version"], env={})
    assert r.exit_code == 0, r.output


def test_helpers():
    assert normalize_url("127.0.0.1:8080") == "http://127.0.0.1:8080/RPC"
    assert normalize_url("http://h:1/") == "http://h:1/RPC"
    assert normalize_url("http://h:1/custom") == "http://h:1/custom"
    assert typed_param("42") == 42 and typed_param("-3") == -3
    assert typed_param("s:42") == "42" and typed_param("sip:a@b") == "sip:a@b" and typed_param("4a") == "4a"
    assert format_result("Reload OK") == "Reload OK"
    assert format_result([]) == "(no rows)"
    assert format_result({"a": {"b": 1}, "c": [1, 2]}) == "a:\n  b  1\nc  1, 2"
