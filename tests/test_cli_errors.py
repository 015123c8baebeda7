"""Operator mistakes get one line that names what is wrong, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

from click.testing import CliRunner

from presenced.cli import main


def test_rpc_with_a_malformed_url_says_so():
    for url, why in [("http://[::1", "not a valid URL"), ("127.0.0.1:70000", "not a valid URL"),
                     ("ftp://x", "not an http:// or https:// URL")]:
        r = CliRunner().invoke(main, ["rpc", "--url", url, "system.listMethods"])
        assert r.exit_code == 1, r.output
        assert why in r.output and "Traceback" not in r.output


def test_config_check_refuses_a_tls_listener_without_a_certificate(tmp_path):
    f = tmp_path / "tls.toml"
    f.write_text('[listen]\naddresses = ["tls:127.0.0.1:5061"]\n')
    r = CliRunner().invoke(main, ["config", "check", str(f)])
    assert r.exit_code == 2
    assert "tls.certificate" in r.output


def test_a_busy_port_is_named_with_its_listen_address():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        r = subprocess.run([sys.executable, "-m", "presenced", "serve", "--db-url", "memory",
                            "--listen", f"udp:127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    finally:
        s.close()
    assert r.returncode == 2
    assert f"udp:127.0.0.1:{port} (listen.addresses)" in r.stderr and "Traceback" not in r.stderr
