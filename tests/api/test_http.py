"""The HTTP layer: routes, bearer token, limits, JSON-RPC envelope errors."""

from __future__ import annotations

import json

import pytest
from api_support import TOKEN, LiveServer

from presenced.api.http import HttpApi, is_loopback, split_hostport


# ------------------------------------------------------------------- health
def test_health_ok_in_memory_mode(live):
    status, headers, body = live.http("GET", "/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["listening"] is True
    assert doc["store"] == {"backend": "memory", "reachable": True}
    assert f"udp:127.0.0.1:{live.port}" in doc["sockets"]


def test_health_head_has_no_body(live):
    status, headers, body = live.http("HEAD", "/health")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 0


def test_health_503_when_not_listening(live):
    # Pretend the UDP socket is gone: health must say so.
    srv = live.server
    saved = srv.udp[:]

    class Dead:
        transport = None

    live.in_loop(lambda: srv.udp.__setitem__(0, Dead()))
    try:
        status, _, body = live.http("GET", "/health")
        assert status == 503
        doc = json.loads(body)
        assert doc["status"] == "unavailable" and doc["listening"] is False
    finally:
        live.in_loop(lambda: srv.udp.__setitem__(slice(None), saved))
    assert live.http("GET", "/health")[0] == 200


# -------------------------------------------------------------------- token
@pytest.mark.parametrize("method,path", [("GET", "/health"), ("GET", "/metrics"), ("POST", "/RPC"), ("GET", "/nope")])
def test_token_required_everywhere(live, method, path):
    body = b'{"jsonrpc":"2.0","method":"core.version","id":1}' if method == "POST" else None
    status, headers, _ = live.http(method, path, body, token=None)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert live.http(method, path, body, token="wrong")[0] == 401
    assert live.http(method, path, body, token=TOKEN + "x")[0] == 401


def test_token_scheme_case_insensitive(live):
    status, _, _ = live.http("GET", "/health", token=None, headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200
    status, _, _ = live.http("GET", "/health", token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401


def test_loopback_without_token_is_open():
    srv = LiveServer(token="").start()
    try:
        assert srv.http("GET", "/health", token=None)[0] == 200
        assert srv.rpc("core.version").startswith("presenced ")
    finally:
        srv.stop()


def test_non_loopback_without_token_is_refused():
    class FakeServer:
        core = None

    with pytest.raises(ValueError, match="http.token"):
        HttpApi(FakeServer(), "0.0.0.0:8080", "")
    with pytest.raises(ValueError, match="http.token"):
        HttpApi(FakeServer(), "192.0.2.1:8080", "")
    with pytest.raises(ValueError, match="http.token"):
        HttpApi(FakeServer(), "example.com:8080", "")


def test_non_loopback_with_token_is_allowed():
    class Core:
        engine = None

    class FakeServer:
        core = Core()

    api = HttpApi(FakeServer(), "0.0.0.0:0", "tok")
    assert api.host == "0.0.0.0"


def test_hostport_helpers():
    assert split_hostport("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_hostport("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        split_hostport("127.0.0.1")
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("host.example")


# ------------------------------------------------------------------- routes
def test_unknown_path_404(live):
    assert live.http("GET", "/nope")[0] == 404


def test_wrong_method_405(live):
    status, headers, _ = live.http("GET", "/RPC")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = live.http("POST", "/metrics", b"{}")
    assert status == 405 and "GET" in headers["allow"]


def _auth() -> bytes:
    return f"Authorization: Bearer {TOKEN}\r\n".encode()


def test_post_without_content_length_411(live):
    out = live.raw_http(b"POST /RPC HTTP/1.1\r\nHost: x\r\n" + _auth() + b"\r\n")
    assert out.startswith(b"HTTP/1.1 411 ")


def test_chunked_body_501(live):
    out = live.raw_http(b"POST /RPC HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + _auth() + b"\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501 ")


def test_body_too_large_413(live):
    out = live.raw_http(b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n" + _auth() + b"\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")


def test_header_too_large_431(live):
    out = live.raw_http(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


def test_bad_request_line_400_and_version_505(live):
    assert live.raw_http(b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert live.raw_http(b"GET /health HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    assert live.raw_http(b"GET /health HTTP/1.1\r\n folded\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_connection_close_and_expect_continue(live):
    body = b'{"jsonrpc":"2.0","method":"core.version","id":1}'
    out = live.raw_http(
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n" + _auth() + b"\r\n" + body
    )
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in out
    assert b'"result": "presenced ' in out


def test_client_disconnect_is_harmless(live):
    import socket

    for data in (b"", b"GET /hea", b"POST /RPC HTTP/1.1\r\nContent-Length: 10\r\n" + _auth() + b"\r\n{"):
        with socket.create_connection(("127.0.0.1", live.server.http.port), timeout=5) as s:
            s.sendall(data)
    assert live.http("GET", "/health")[0] == 200


# ------------------------------------------------------- JSON-RPC envelope
def test_malformed_json_is_32700(live):
    status, doc = live.rpc_raw(b'{"jsonrpc": "2.0", "method": ')
    assert status == 200
    assert doc == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
    assert live.rpc_raw(b"\xff\xfe")[1]["error"]["code"] == -32700


def test_unknown_method_is_32601(live):
    _, doc = live.rpc_raw({"jsonrpc": "2.0", "method": "presence.nope", "id": "a"})
    assert doc["error"]["code"] == -32601 and doc["id"] == "a"


@pytest.mark.parametrize("req", [
    {"method": "core.version", "id": 1},                          # no jsonrpc
    {"jsonrpc": "1.0", "method": "core.version", "id": 1},
    {"jsonrpc": "2.0", "method": 5, "id": 1},
    {"jsonrpc": "2.0", "method": "core.version", "params": "x", "id": 1},
    {"jsonrpc": "2.0", "method": "core.version", "id": {"a": 1}},
    42,
])
def test_invalid_request_is_32600(live, req):
    _, doc = live.rpc_raw(req)
    assert doc["error"]["code"] == -32600


def test_invalid_params_is_32602(live):
    for params in (
        ["basic"],                                   # missing presentity_uri
        ["sideways", "sip:a@b"],                     # bad mode
        ["basic", "sip:a@b", "extra"],               # too many
        {"mode": "basic", "presentity_uri": "sip:a@b", "bogus": 1},
    ):
        _, doc = live.rpc_raw({"jsonrpc": "2.0", "method": "presence.watcher_list", "params": params, "id": 1})
        assert doc["error"]["code"] == -32602, params
    _, doc = live.rpc_raw({"jsonrpc": "2.0", "method": "presence.refreshWatchers",
                           "params": ["sip:a@b", "presence", "one"], "id": 1})
    assert doc["error"]["code"] == -32602


def test_named_params(live):
    _, doc = live.rpc_raw({"jsonrpc": "2.0", "method": "presence.watcher_list",
                           "params": {"mode": "basic", "presentity_uri": "sip:nobody@127.0.0.1"}, "id": 1})
    assert doc["result"] == []


def test_batch_and_notifications(live):
    _, doc = live.rpc_raw([
        {"jsonrpc": "2.0", "method": "core.version", "id": 1},
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        {"jsonrpc": "2.0", "method": "core.version"},          # notification: no reply
        7,
    ])
    assert [d.get("id") for d in doc] == [1, 2, None]
    assert doc[0]["result"].startswith("presenced")
    assert doc[1]["error"]["code"] == -32601
    assert doc[2]["error"]["code"] == -32600
    status, _, body = live.http("POST", "/RPC", json.dumps({"jsonrpc": "2.0", "method": "core.version"}).encode())
    assert status == 204 and body == b""
    _, doc = live.rpc_raw([])
    assert doc["error"]["code"] == -32600


def test_large_body_and_deep_nesting(live):
    big = json.dumps({"jsonrpc": "2.0", "method": "core.version", "id": 1, "pad": "x" * 600_000}).encode()
    status, doc = live.rpc_raw(big)
    assert status == 200 and doc["result"].startswith("presenced")
    status, doc = live.rpc_raw(b"[" * 100_000 + b"]" * 100_000)
    assert status == 200 and doc["error"]["code"] == -32700


def test_mutating_calls_are_logged(live, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="presenced.rpc"):
        assert live.rpc("presence.cleanup") == "Reload OK"
    assert any("RPC presence.cleanup" in r.getMessage() and "127.0.0.1:" in r.getMessage() for r in caplog.records)
