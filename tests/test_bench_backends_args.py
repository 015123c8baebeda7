"""Smoke test of bench/backends.py's argument parsing and command building (no servers)."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "backends.py"
_spec = importlib.util.spec_from_file_location("bench_backends", _PATH)
backends = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backends)


def test_defaults(monkeypatch):
    for k in ("BENCH_BACKENDS", "BENCH_STORE_MODES", "BENCH_MODE", "BENCH_SCENARIOS", "BENCH_STEP_SECONDS"):
        monkeypatch.delenv(k, raising=False)
    a = backends.parse_args([])
    assert a.backends == ["memory", "sqlite", "postgresql", "mysql"]
    assert a.modes == ["wt", "wb", "db"]
    assert a.mode == "quick" and a.scenarios == ["A", "B", "C"] and a.step_seconds is None
    plan = backends.combos(a.backends, a.modes)
    assert plan[0] == ("memory", "mem") and len(plan) == 10


def test_env_and_errors(monkeypatch):
    monkeypatch.setenv("BENCH_BACKENDS", "sqlite,postgresql")
    monkeypatch.setenv("BENCH_STEP_SECONDS", "3")
    a = backends.parse_args(["--modes", "db"])
    assert backends.combos(a.backends, a.modes) == [("sqlite", "db"), ("postgresql", "db")]
    assert a.step_seconds == 3.0
    with pytest.raises(SystemExit):
        backends.parse_args(["--backends", "oracle"])
    with pytest.raises(SystemExit):
        backends.parse_args(["--modes", "wx"])


def test_server_cmd_placeholders():
    sets = backends.server_sets("postgresql", "wb", "presbench_")
    assert sets["presence.subs_db_mode"] == 2 and sets["presence.db_update_period"] == 5
    assert sets["presence.presentity_table"] == "presbench_presentity"
    url = "postgresql://postgres@127.0.0.1:5432/test"
    cmd = backends.harness_server_cmd(backends.presenced_cmd("/x/presenced", url, sets, "warning"), url,
                                      "presbench_")
    filled = cmd.format(host="127.0.0.1", port=5060, workdir="/w")
    assert "_serve" in filled and "udp:127.0.0.1:5060" in filled
    assert "presence.publ_cache=1" in filled
