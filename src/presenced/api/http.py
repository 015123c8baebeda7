"""The HTTP management API: JSON-RPC, Prometheus metrics, health.

    POST /RPC      JSON-RPC 2.0 (single or batch), see presenced.api.rpc
    GET  /metrics  Prometheus text format 0.0.4, see presenced.metrics
    GET  /health   200 when the SIP sockets listen and the store answers, else 503

Deliberately small and stdlib-only (`asyncio.start_server`): three routes, one
request per connection (`Connection: close`, no keep-alive, no chunked
bodies), hard limits on header size (16 KiB), body size (1 MiB), time to
send a request (10 s) and concurrent connections (64). A dependency such as
aiohttp would bring a router, keep-alive and streaming nobody needs for a
management port, plus its own release cadence and CVE surface.

Access control: with `http.token` set every route (health and metrics too)
needs `Authorization: Bearer <token>`, else 401. Without a token the API may
only listen on a loopback address (127.0.0.0/8, ::1, localhost): binding any
other address without one is refused when the server is built. Plain HTTP
carries the token in clear, so a non-loopback listener is logged as a
warning: put it behind TLS (a reverse proxy) or a private network.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from typing import Any

from presenced import __version__
from presenced.api.rpc import RpcService
from presenced.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from presenced.metrics import Metrics

log = logging.getLogger("presenced.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
HEALTH_STORE_TIMEOUT = 2.0
MAX_CONNECTIONS = 64

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

ROUTES = {"/RPC": ("POST",), "/metrics": ("GET", "HEAD"), "/health": ("GET", "HEAD")}


class HttpError(Exception):
    def __init__(self, status: int, message: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message or REASONS.get(status, ""))
        self.status = status
        self.message = message or REASONS.get(status, "")
        self.headers = headers or []


def split_hostport(spec: str) -> tuple[str, int]:
    """'127.0.0.1:8080' / '[::1]:8080' / 'localhost:0' → (host, port)."""
    s = spec.strip()
    if s.startswith("["):
        end = s.find("]")
        host, rest = s[1:end], s[end + 1:]
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_s = s.rpartition(":")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"http.listen {spec!r}: expected HOST:PORT (IPv6 in brackets)")
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Request:
    __slots__ = ("method", "target", "path", "version", "headers", "body", "peer")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = b""
        self.peer = ""


class HttpApi:
    """The management listener of one `Server` (`server.http`)."""

    def __init__(self, server: Any, listen: str, token: str = "") -> None:
        self.server = server
        self.listen = listen
        self.token = token or ""
        self.host, self.requested_port = split_hostport(listen)
        if not self.token and not is_loopback(self.host):
            raise ValueError(
                f"http.listen = {listen!r} is not a loopback address and http.token is empty: "
                f"refusing to expose the management API without authentication "
                f"(set http.token, or listen on 127.0.0.1 / [::1])"
            )
        self.port: int | None = None
        self.metrics = Metrics(server)
        self.rpc = RpcService(server, self.metrics)
        # Several workers (runtime/workers.py) replace it with one that sums every worker's text.
        self.render_metrics: Any = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self.requested_port, limit=MAX_HEAD, reuse_address=True,
        )
        sock = self._server.sockets[0] if self._server.sockets else None
        self.port = sock.getsockname()[1] if sock is not None else self.requested_port
        self.metrics.attach()
        if not is_loopback(self.host):
            log.warning("HTTP management API on non-loopback %s: plain HTTP sends the bearer token in clear; "
                        "keep it on a private network or behind a TLS proxy", self.url)
        log.info("HTTP management API on %s (/RPC, /metrics, /health%s)", self.url,
                 ", bearer token required" if self.token else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, TimeoutError):
                pass
            self._server = None
        self.metrics.detach()

    # ----------------------------------------------------------- connection
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= MAX_CONNECTIONS:
            await self._write(writer, 503, b"too many connections\n", "text/plain; charset=utf-8",
                              [("Retry-After", "1")])
            await self._close(writer)
            return
        if task is not None:
            self._conns.add(task)
        path = "other"
        status = 500
        try:
            try:
                req = await self._read_request(reader, writer)
            except HttpError as e:
                status = e.status
                await self._write(writer, e.status, (e.message + "\n").encode(), "text/plain; charset=utf-8", e.headers)
                return
            if req is None:
                return  # the client went away before sending a request
            path = req.path if req.path in ROUTES else "other"
            try:
                status, body, ctype, headers = await self._route(req)
            except HttpError as e:
                status, body, ctype, headers = e.status, (e.message + "\n").encode(), "text/plain; charset=utf-8", e.headers
            except Exception:
                log.exception("HTTP %s %s failed", req.method, req.path)
                status, body, ctype, headers = 500, b"internal error\n", "text/plain; charset=utf-8", []
            await self._write(writer, status, b"" if req.method == "HEAD" else body, ctype, headers,
                              content_length=len(body))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        finally:
            self.metrics.count_http(path, status)
            await self._close(writer)
            if task is not None:
                self._conns.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip():
                return None
            raise HttpError(400, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request head larger than {MAX_HEAD} bytes") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise HttpError(408, "request not received in time") from None
        req = self._parse_head(head)
        peer = writer.get_extra_info("peername")
        if peer:
            req.peer = f"{peer[0]}:{peer[1]}"
        if not self._authorized(req):
            raise HttpError(401, "missing or wrong bearer token", [("WWW-Authenticate", 'Bearer realm="presenced"')])
        if req.method in ("POST", "PUT", "PATCH"):
            if "transfer-encoding" in req.headers:
                raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
            cl = req.headers.get("content-length")
            if cl is None:
                raise HttpError(411, "Content-Length required")
            if not cl.isdigit():
                raise HttpError(400, "bad Content-Length")
            n = int(cl)
            if n > MAX_BODY:
                raise HttpError(413, f"body larger than {MAX_BODY} bytes")
            if req.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            try:
                req.body = await asyncio.wait_for(reader.readexactly(n), READ_TIMEOUT)
            except (asyncio.TimeoutError, TimeoutError):
                raise HttpError(408, "request body not received in time") from None
            except asyncio.IncompleteReadError:
                raise HttpError(400, "body shorter than Content-Length") from None
        return req

    @staticmethod
    def _parse_head(head: bytes) -> Request:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            raise HttpError(400, "bad request") from None
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
            raise HttpError(400, "bad request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, "too many header fields")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line or line[0] in " \t":
                raise HttpError(400, "obsolete line folding or empty header line")
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or any(c in name for c in " \t\"(),/;<=>?@[\\]{}"):
                raise HttpError(400, "bad header field")
            key = name.lower()
            value = value.strip()
            if key == "content-length" and key in headers and headers[key] != value:
                raise HttpError(400, "conflicting Content-Length")
            headers[key] = value if key not in headers or key == "content-length" else f"{headers[key]}, {value}"
        return Request(method, target, version, headers)

    def _authorized(self, req: Request) -> bool:
        if not self.token:
            return True
        auth = req.headers.get("authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(cred.strip().encode("utf-8", "surrogateescape"), self.token.encode("utf-8"))

    # --------------------------------------------------------------- routes
    async def _route(self, req: Request) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        allowed = ROUTES.get(req.path)
        if allowed is None:
            raise HttpError(404, f"no such resource {req.path}; try /RPC, /metrics or /health")
        if req.method not in allowed:
            raise HttpError(405, f"{req.method} not allowed on {req.path}", [("Allow", ", ".join(allowed))])
        if req.path == "/RPC":
            out = await self.rpc.handle(req.body, req.peer)
            if out is None:
                return 204, b"", "application/json", []
            return 200, out, "application/json", []
        if req.path == "/metrics":
            text = self.metrics.render() if self.render_metrics is None else await self.render_metrics()
            return 200, text.encode("utf-8"), METRICS_CONTENT_TYPE, []
        status, doc = await self.health()
        return status, (json.dumps(doc, indent=2) + "\n").encode(), "application/json", []

    async def health(self) -> tuple[int, dict[str, Any]]:
        server = self.server
        listening = self.metrics._listening()
        p = getattr(server, "persistence", None)
        if p is None:
            store: dict[str, Any] = {"backend": "memory", "reachable": True}
        else:
            t0 = time.perf_counter()
            try:
                reachable = bool(await asyncio.wait_for(p.ping(), HEALTH_STORE_TIMEOUT))
            except Exception:
                reachable = False
            store = {
                "backend": getattr(p.store, "url", type(p.store).__name__),
                "reachable": reachable,
                "ping_seconds": round(time.perf_counter() - t0, 4),
                "writes_healthy": bool(p.healthy),
                "last_error": p.last_error,
                "commits": p.commits,
                "failures": p.failures,
            }
        ok = listening and store["reachable"]
        doc = {
            "status": "ok" if ok else "unavailable",
            "version": __version__,
            "listening": listening,
            "sockets": [f"{proto}:{host}:{port}" for proto, host, port in getattr(server, "bound", [])],
            "store": store,
            "publications": len(server.core.engine.etags),
            "subscriptions": len(server.core.engine.subs_by_dialog),
        }
        return (200 if ok else 503), doc

    # ---------------------------------------------------------------- output
    async def _write(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str,
                     headers: list[tuple[str, str]] | None = None, content_length: int | None = None) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            f"Server: presenced/{__version__}",
            "Connection: close",
            "Cache-Control: no-store",
        ]
        if status != 204:
            lines.append(f"Content-Type: {ctype}")
            lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
        lines.extend(f"{k}: {v}" for k, v in headers or [])
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError, TimeoutError):
            pass

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (ConnectionError, asyncio.TimeoutError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:
            pass
