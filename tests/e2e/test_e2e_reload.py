"""SIGHUP reloads what can change live and names what cannot; JSON log lines."""

from __future__ import annotations

import json
import signal
import time

from e2e_support import Phone, Server


def _wait_for(srv: Server, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = srv.output()
        if text in out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in server output:\n{srv.output()}")


def test_sighup_applies_min_expires_and_reports_restart_only_params(tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text("[presence]\nmin_expires = 10\n")
    srv = Server("--config", str(conf), "--set", "presence_xml.force_active=1").start()
    try:
        p = Phone(srv.port)
        assert p.subscribe("sip:a@127.0.0.1", expires=15)[0].status == 200
        conf.write_text("[presence]\nmin_expires = 20\n[registrar]\nenabled = 0\n")
        srv.proc.send_signal(signal.SIGHUP)
        out = _wait_for(srv, "SIGHUP: reloaded")
        assert "applied: presence.min_expires" in out and "registrar.enabled" in out
        resp, _ = p.subscribe("sip:b@127.0.0.1", expires=15)
        assert resp.status == 423 and resp.get("min-expires") == "20"
        conf.write_text("[presence]\nmin_expires = 'x'\n")
        srv.proc.send_signal(signal.SIGHUP)
        out = _wait_for(srv, "configuration not reloaded")
        assert f"{conf}:2: presence.min_expires" in out  # file, line and field of the error
        resp, _ = p.subscribe("sip:c@127.0.0.1", expires=15)
        assert resp.status == 423 and resp.get("min-expires") == "20"  # the old config stays
        assert p.request("OPTIONS", "sip:127.0.0.1").status == 200  # still serving
    finally:
        srv.stop()


def test_json_logs_are_one_json_object_per_line(tmp_path):
    srv = Server("--set", "log.format=json", "--log-level", "debug").start()
    try:
        p = Phone(srv.port)
        p.request("OPTIONS", "sip:127.0.0.1")
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(10)
        lines = [json.loads(line) for line in srv.output().splitlines() if line.startswith("{")]
        assert lines and all("ts" in x and "level" in x and "msg" in x for x in lines)
    finally:
        srv.stop()
