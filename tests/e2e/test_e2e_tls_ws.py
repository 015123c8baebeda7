"""TLS and SIP over WebSocket (RFC 7118) over real sockets.

A throwaway CA and server certificate come from trustme; the WebSocket
client is wsproto over a plain (or TLS-wrapped) socket, like a browser
softphone: Via and Contact hosts under `.invalid`, so everything the server
sends must come back over the client's own connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

trustme = pytest.importorskip("trustme")

from e2e_support import HOST, Phone, Server, cli, pidf, read_until, sub_state, tuple_ids, uid  # noqa: E402
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import (  # noqa: E402
    AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, Request, TextMessage,
)

from presenced.sip import StreamFramer, build_response, parse_message  # noqa: E402

ORIGIN = "https://phone.example.com"


def tcp_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert(HOST, "localhost")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    with open(d / "cert.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"cert": str(d / "cert.pem"), "key": str(d / "key.pem"), "ca": str(d / "ca.pem"), "dir": d}


@pytest.fixture(scope="module")
def srv(certs):
    tls, ws, wss = tcp_port(), tcp_port(), tcp_port()
    s = Server(
        "--listen", f"tls:{HOST}:{tls}", "--listen", f"ws:{HOST}:{ws}", "--listen", f"wss:{HOST}:{wss}",
        "--set", f"tls.certificate={certs['cert']}", "--set", f"tls.private_key={certs['key']}",
        "--set", f"tls.ca_list={certs['ca']}",
        "--set", "websocket.path=/ws", "--set", f"websocket.origins={ORIGIN}",
        "--set", "presence_xml.force_active=1", "--set", "presence.min_expires=10",
    ).start()
    s.ports = {"tls": tls, "ws": ws, "wss": wss}
    yield s
    out = s.output()
    s.stop()
    assert "Traceback" not in out and "exception" not in out.lower(), out


def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


# ------------------------------------------------------------------ clients
class TlsPhone(Phone):
    def __init__(self, port: int, ca) -> None:
        super().__init__(port, "tls")
        self.sock = client_ctx(ca).wrap_socket(self.sock, server_hostname=HOST)
        self.port = self.sock.getsockname()[1]


def ws_handshake(sock, path: str = "/ws", protocols=("sip",), origin: str | None = ORIGIN):
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(b"origin", origin.encode())] if origin else []
    sock.sendall(ws.send(Request(host=HOST, target=path, subprotocols=list(protocols), extra_headers=extra)))
    sock.settimeout(3)
    while True:
        data = sock.recv(65535)
        ws.receive_data(data or None)
        for ev in ws.events():
            return ws, ev
        if not data:
            return ws, None


class WsPhone(Phone):
    """A browser-like SIP-over-WebSocket client (RFC 7118 §7 style)."""

    def __init__(self, srv, transport: str = "wss", ca=None) -> None:
        super().__init__(srv.ports[transport], transport)
        if transport == "wss":
            self.sock = client_ctx(ca).wrap_socket(self.sock, server_hostname=HOST)
        self.ws, ev = ws_handshake(self.sock)
        assert isinstance(ev, AcceptConnection), ev
        assert ev.subprotocol == "sip"
        self.via_host = f"{uid('df7jal23ls0d')}.invalid"
        self._parts: list[str | bytes] = []

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.via_host};transport=ws>"

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=data.decode())))

    def _read(self, timeout: float) -> list[bytes]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65535)
        except socket.timeout:
            return []
        if not data:
            raise ConnectionError("server closed the connection")
        self.ws.receive_data(data)
        out = []
        for ev in self.ws.events():
            if isinstance(ev, (TextMessage, BytesMessage)):
                self.frames = getattr(self, "frames", 0) + 1
                self._parts.append(ev.data)
                if ev.message_finished:
                    whole = "".join(self._parts) if isinstance(ev.data, str) else b"".join(self._parts)
                    self._parts = []
                    out.append(whole.encode() if isinstance(whole, str) else whole)
            elif isinstance(ev, Ping):
                self.sock.sendall(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                raise ConnectionError("server closed the WebSocket")
        return out


def _still_answers(srv, ca) -> None:
    with WsPhone(srv, "wss", ca) as ph:
        assert ph.request("OPTIONS", f"sip:ping@{HOST}").status == 200
    with Phone(srv.port) as ph:
        assert ph.request("OPTIONS", f"sip:ping@{HOST}:{srv.port}").status == 200


# ------------------------------------------------------------------- TLS
def test_publish_and_subscribe_over_tls(srv, ca):
    pres = f"sip:{uid('p')}@{HOST}"
    with TlsPhone(srv.ports["tls"], ca) as ph:
        assert ph.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert ph.publish(pres, pidf(pres, "t-tls")).status == 200
        r, dlg = ph.subscribe(pres)
        assert r.status == 200
        assert r.contacts[0].uri_text.endswith(";transport=tls")
        n = ph.expect_notify(dlg)
        assert n.top_via.transport.upper() == "TLS"
        assert tuple_ids(n.body) == ["t-tls"]
        assert ph.subscribe(pres, expires=0, dialog=dlg)[0].status == 200
        assert sub_state(ph.expect_notify(dlg)).startswith("terminated")


def test_sips_request_gets_sips_contact(srv, ca):
    pres = f"sips:{uid('p')}@{HOST}"
    with TlsPhone(srv.ports["tls"], ca) as ph:
        r, dlg = ph.subscribe(pres)
        assert r.status == 200
        assert r.contacts[0].uri_text.startswith("sips:")
        ph.expect_notify(dlg)


def test_notify_opens_verified_tls_connection_to_tls_contact(srv, ca, certs):
    """A watcher on UDP whose Contact says transport=tls: the NOTIFY goes over a
    new TLS connection, and the server checks the phone's certificate against ca_list."""
    phone_cert = ca.issue_cert(HOST)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    phone_cert.configure_cert(ctx)
    lsock = socket.create_server((HOST, 0))
    lport = lsock.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        lsock.settimeout(5)
        try:
            conn, _ = lsock.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                framer = StreamFramer()
                tls.settimeout(5)
                while not got:
                    data = tls.recv(65535)
                    if not data:
                        return
                    for m in framer.feed(data):
                        if m == b"\r\n\r\n":
                            continue
                        got.append(m)
                        tls.sendall(build_response(parse_message(m, stream=True), 200, "OK", to_tag=None))
                time.sleep(0.2)
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    pres = f"sip:{uid('p')}@{HOST}"
    with Phone(srv.port) as ph:
        data, branch = ph.build(
            "SUBSCRIBE", pres,
            [("Event", "presence"), ("Expires", "60"), ("Contact", f"<sip:w@{HOST}:{lport};transport=tls>")])
        ph.send_raw(data)
        assert ph.wait_response(branch).status == 200
    t.join(6)
    lsock.close()
    assert got, "no NOTIFY arrived over TLS"
    n = parse_message(got[0], stream=True)
    assert n.method == "NOTIFY" and n.top_via.transport.upper() == "TLS"


# ------------------------------------------------------------- WebSocket
@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_subscribe_over_websocket_gets_notifies_on_same_connection(srv, ca, transport):
    pres = f"sip:{uid('p')}@{HOST}"
    with WsPhone(srv, transport, ca) as ws, Phone(srv.port) as publisher:
        r, dlg = ws.subscribe(pres)
        assert r.status == 200
        assert r.contacts[0].uri_text.endswith(f";transport={transport}")
        first = ws.expect_notify(dlg)
        assert first.top_via.transport.upper() == transport.upper()
        assert first.contacts[0].uri_text.endswith(f";transport={transport}")
        # a PUBLISH from a UDP client reaches the WebSocket watcher
        assert publisher.publish(pres, pidf(pres, "t-udp")).status == 200
        n = ws.expect_notify(dlg)
        assert tuple_ids(n.body) == ["t-udp"]
        assert ws.subscribe(pres, expires=0, dialog=dlg)[0].status == 200
        last = ws.expect_notify(dlg)
        assert sub_state(last).startswith("terminated")
        assert ws.frames >= 4  # one WebSocket message per SIP message


def test_websocket_message_without_content_length(srv, ca):
    with WsPhone(srv, "ws", ca) as ws:
        data, branch = ws.build("OPTIONS", f"sip:ping@{HOST}", content_length=False)
        ws.send_raw(data)
        assert ws.wait_response(branch).status == 200


def test_notify_to_closed_websocket_fails_and_ends_subscription(srv, ca):
    pres = f"sip:{uid('p')}@{HOST}"
    ws = WsPhone(srv, "ws", ca)
    r, dlg = ws.subscribe(pres)
    assert r.status == 200
    ws.expect_notify(dlg)
    ws.close()
    time.sleep(0.2)
    with Phone(srv.port) as publisher:
        assert publisher.publish(pres, pidf(pres)).status == 200  # its NOTIFY cannot be delivered
    time.sleep(0.3)
    # no new connection was attempted towards *.invalid; the subscription is gone
    # (a failed NOTIFY is a timeout, and timeout_rm_subs defaults to 1)
    with WsPhone(srv, "ws", ca) as again:
        again.user, again.via_host = ws.user, ws.via_host
        assert again.subscribe(pres, dialog=dlg)[0].status == 481
    _still_answers(srv, ca)


def test_refresh_over_new_websocket_moves_notifies(srv, ca):
    """A browser that reconnected refreshes its subscription over the new
    connection: NOTIFYs follow it."""
    pres = f"sip:{uid('p')}@{HOST}"
    old = WsPhone(srv, "ws", ca)
    r, dlg = old.subscribe(pres)
    assert r.status == 200
    old.expect_notify(dlg)
    new = WsPhone(srv, "ws", ca)
    new.user, new.via_host = old.user, old.via_host
    old.close()
    try:
        assert new.subscribe(pres, dialog=dlg)[0].status == 200
        new.expect_notify(dlg)
        with Phone(srv.port) as publisher:
            assert publisher.publish(pres, pidf(pres, "t-new")).status == 200
        assert tuple_ids(new.expect_notify(dlg).body) == ["t-new"]
    finally:
        new.close()


# ------------------------------------------------------------ handshakes
@pytest.mark.parametrize("protocols", [(), ("chat",)])
def test_handshake_without_sip_subprotocol_is_refused(srv, protocols):
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        _, ev = ws_handshake(s, protocols=protocols)
        assert isinstance(ev, RejectConnection)
        assert ev.status_code == 400


@pytest.mark.parametrize("protocols", [("SIP",), ("Sip",), ("foo", "SIP")])
def test_handshake_offering_sip_in_any_case_is_accepted_with_the_offered_token(srv, protocols):
    """Tokens compare case-insensitively; the answer must name the token as
    offered (a client, wsproto included, refuses any other)."""
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        _, ev = ws_handshake(s, protocols=protocols)
        assert isinstance(ev, AcceptConnection), ev
        assert ev.subprotocol == protocols[-1]


def test_handshake_wrong_path_or_origin_is_refused(srv):
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        _, ev = ws_handshake(s, path="/other")
        assert isinstance(ev, RejectConnection) and ev.status_code == 404
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        _, ev = ws_handshake(s, origin="https://evil.example.net")
        assert isinstance(ev, RejectConnection) and ev.status_code == 403
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:  # no Origin: not a browser
        _, ev = ws_handshake(s, origin=None)
        assert isinstance(ev, AcceptConnection)


# --------------------------------------------------------------- garbage
def test_garbage_does_not_hurt_the_server(srv, ca):
    # plain SIP (not TLS) sent to the TLS port
    with socket.create_connection((HOST, srv.ports["tls"]), timeout=3) as s:
        s.sendall(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        assert read_until(s, lambda b: False, timeout=1.0)[:7] != b"SIP/2.0"
    # a TLS handshake that stops half-way
    with socket.create_connection((HOST, srv.ports["wss"]), timeout=3) as s:
        s.sendall(b"\x16\x03\x01\x00\x50" + b"\x00" * 10)
    # not HTTP at all on the WebSocket port
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        s.sendall(b"\x00\xff garbage \r\n\r\n")
        reply = read_until(s, lambda b: b"\r\n\r\n" in b, timeout=2.0)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    # a valid handshake, then bytes that are not WebSocket frames
    with socket.create_connection((HOST, srv.ports["ws"]), timeout=3) as s:
        ws, ev = ws_handshake(s)
        assert isinstance(ev, AcceptConnection)
        s.sendall(b"\x8f\x05hello" * 3)  # reserved opcode, unmasked
        read_until(s, lambda b: False, timeout=0.5)
    # a valid frame carrying something that is not SIP
    with WsPhone(srv, "ws", ca) as ph:
        ph.sock.sendall(ph.ws.send(TextMessage(data="hello there\r\n\r\n")))
        time.sleep(0.2)
        assert ph.request("OPTIONS", f"sip:ping@{HOST}").status == 200
    _still_answers(srv, ca)


# ----------------------------------------------------------------- config
def test_bad_certificate_settings_exit_2_naming_the_field(certs):
    port = tcp_port()
    base = ("serve", "--db-url", "memory", "--listen", f"tls:{HOST}:{port}")
    r = cli(*base, "--set", "tls.certificate=/nonexistent/cert.pem", "--set", f"tls.private_key={certs['key']}")
    assert r.returncode == 2 and "tls.certificate" in r.stderr and "no such file" in r.stderr
    r = cli(*base)
    assert r.returncode == 2 and "tls.certificate" in r.stderr
    r = cli(*base, "--set", f"tls.certificate={certs['key']}", "--set", f"tls.private_key={certs['key']}")
    assert r.returncode == 2 and "tls.certificate" in r.stderr
    other = trustme.CA().issue_cert(HOST)
    other_key = certs["dir"] / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    r = cli(*base, "--set", f"tls.certificate={certs['cert']}", "--set", f"tls.private_key={other_key}")
    assert r.returncode == 2 and "tls.private_key" in r.stderr and "does not match" in r.stderr
    r = cli(*base, "--set", f"tls.certificate={certs['cert']}", "--set", f"tls.private_key={certs['key']}",
            "--set", "tls.require_certificate=1")
    assert r.returncode == 2 and "tls.require_certificate" in r.stderr and "tls.ca_list" in r.stderr
