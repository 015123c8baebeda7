"""The sans-I/O SIP server core: bytes and `now` in, bytes out.

`SipCore.receive()` is the whole request path: parse, RFC 3581 received/rport,
transaction matching (retransmissions never reach the TU), the checks every
UAS makes (RFC 3261 §8.2), and dispatch to the presence engine, the
registrar or OPTIONS. Output accumulates in `outbox` as (bytes, Address,
client transaction or None); the runtime drains it after every call and
arms one OS timer for `next_deadline()`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

from presenced import __version__
from presenced.core.engine import PresenceEngine, Reply, RequestContext, new_tag
from presenced.core.registrar import Registrar
from presenced.logsetup import CALL_ID
from presenced.events import default_registry
from presenced.events.registry import EventRegistry
from presenced.sip.errors import SipParseError
from presenced.sip.headers import split_commas
from presenced.sip.message import Request, Response, build_response, check_request, parse_message
from presenced.transaction.layer import Address, ClientTransaction, ServerTransaction, TransactionLayer
from presenced.transaction.timers import TimerHeap

log = logging.getLogger("presenced.core")

SUPPORTED_SCHEMES = frozenset({"sip", "sips", "pres", "tel", "im"})
SERVER_HEADER = ("Server", f"presenced/{__version__}")


# How late Timer J / Timer K may run (their state only lingers longer).
LAX_TIMER_SLACK = 1.0


def _opt(cfg: Any, section: str, name: str, default: Any) -> Any:
    sec = getattr(cfg, section, None) if cfg is not None else None
    return getattr(sec, name, default) if sec is not None else default


MAX_PARKED = 256  # requests waiting for a credentials lookup, all users together


def _credentials(row: Any) -> Any:
    from presenced.auth import Credentials

    return Credentials(row.username, row.domain, password=row.password or None, ha1=row.ha1 or None,
                       ha1b=row.ha1b or None)


# Seconds an answered initial SUBSCRIBE is remembered to recognise a merged
# copy of it (RFC 3261 §8.2.2.2). Copies arrive together; at 5,000 new
# dialogs/s this is ~40,000 small entries.
MERGE_WINDOW = 8.0

# Methods whose server transaction a CANCEL may name (answered 405 or not).
_CANCELLABLE = ("SUBSCRIBE", "PUBLISH", "REGISTER", "OPTIONS", "NOTIFY", "MESSAGE", "INFO", "UPDATE", "REFER")
# Headers a response to an unparsable request copies (long and compact names).
_ANSWER_COPIES = frozenset((b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"))


class SipCore:
    def __init__(self, cfg: Any = None, registry: EventRegistry | None = None) -> None:
        self.cfg = cfg
        self.timers = TimerHeap()
        self.tx = TransactionLayer(self.timers)
        self.registry = registry or default_registry(cfg)
        self.engine = PresenceEngine(self.registry, self.tx, self.timers, cfg)
        self.registrar: Registrar | None = None
        if int(_opt(cfg, "registrar", "enabled", 1)):
            self.registrar = Registrar(
                self.timers,
                min_expires=int(_opt(cfg, "registrar", "min_expires", 60)),
                max_expires=int(_opt(cfg, "registrar", "max_expires", 3600)),
                default_expires=int(_opt(cfg, "registrar", "default_expires", 3600)),
            )
        if self.registrar is not None and self.registry.get("reg") is not None:
            self._reg_recent: dict[str, list] = {}
            self.registrar.on_change = self._registration_changed
            self.engine.state_providers["reg"] = self._reginfo_for
        self.authorizer = None
        if not int(_opt(cfg, "presence_xml", "force_active", 0)):
            from presenced.core.authorization import RulesAuthorizer

            self.authorizer = RulesAuthorizer(
                self.engine,
                no_rules_policy=str(_opt(cfg, "presence_xml", "no_rules_policy", "pending")),
                sphere_check=bool(int(_opt(cfg, "presence", "enable_sphere_check", 0))),
            )
            self.engine.authorize = self.authorizer
            if self.authorizer.sphere_check:
                self.engine.on_publication_changed = self.authorizer.publication_changed
        # Built-in digest authentication (RFC 3261 §22) for the methods in auth.require.
        self.auth_methods = {m.upper() for m in (_opt(cfg, "auth", "require", []) or [])}
        self.auth_realm = str(_opt(cfg, "auth", "realm", "") or "")
        auth_algorithms = tuple(_opt(cfg, "auth", "algorithms", None) or ("MD5",))
        self.credentials: dict[tuple[str, str], Any] = {}
        # Set by the runtime: (user, domain) -> True when it is fetching that user's
        # credentials; the request then waits for `credentials_fetched`.
        self.credentials_miss: Callable[[str, str], bool] | None = None
        self._parked: dict[tuple[str, str], list[tuple[Request, ServerTransaction, RequestContext]]] = {}
        # Initial SUBSCRIBEs answered 2xx in the last MERGE_WINDOW seconds, by
        # (Call-ID, From tag, CSeq), oldest first: RFC 3261 §8.2.2.2 merged requests.
        self._recent_initial: dict[tuple[str, str, int], float] = {}
        self._recent_order: deque[tuple[float, tuple[str, str, int]]] = deque()
        self._n_parked = 0
        self._resuming = False
        self.digest = None
        if self.auth_methods:
            import secrets as _secrets

            from presenced.auth import DigestAuthenticator

            self.digest = DigestAuthenticator(
                self.auth_realm or "presenced", _secrets.token_bytes(32), algorithms=auth_algorithms)
        # NOTIFYs sent per step; the rest waits for `drain_fanout` (None: no limit).
        self.fanout_batch: int | None = None
        self.route: Callable[..., Any] | None = None
        self.stats: dict[str, int] = {"dropped": 0, "parse_errors": 0, "internal_errors": 0}
        self.requests_by_method: dict[str, int] = {}
        self.responses_by_code: dict[int, int] = {}

    # ------------------------------------------------------ registrar → reg
    def _registration_changed(self, aor: str, now: float, changes: list) -> None:
        self._reg_recent[aor] = [(b, ev) for b, ev in changes if ev in ("expired", "unregistered")]
        self.engine.state_changed(aor, "reg", now)

    def _reginfo_for(self, aor: str, entity: str):
        """RFC 3680 document for the registrar's bindings of `aor`."""
        from presenced.events.formats.reginfo import ContactEntry, reginfo_id, render_reginfo

        assert self.registrar is not None
        now = self.engine.now
        contacts = [
            ContactEntry(
                id=b.id, uri=b.contact, state="active", event=b.event, expires=max(0, int(b.expires_at - now)),
                q=b.q, callid=b.call_id, cseq=b.cseq, duration_registered=max(0, int(now - b.registered_at)),
            )
            for b in self.registrar.lookup(aor)
        ]
        contacts += [
            ContactEntry(id=b.id, uri=b.contact, state="terminated", event=ev, callid=b.call_id, cseq=b.cseq)
            for b, ev in self._reg_recent.pop(aor, [])
        ]
        # RFC 3680: no binding yet is the registration's "init" state (full
        # state all the same: the first NOTIFY must say so, not come empty)
        state = ("active" if any(c.state == "active" for c in contacts) else "terminated") if contacts else "init"
        return render_reginfo(aor, reginfo_id(aor), state, contacts)

    @property
    def outbox(self) -> list[tuple[bytes, Address, ClientTransaction | None]]:
        return self.tx.outbox

    def allow(self) -> str:
        methods = ["OPTIONS", "PUBLISH", "SUBSCRIBE"]
        if self.registrar is not None:
            methods.append("REGISTER")
        methods.append("CANCEL")
        return ", ".join(methods)

    def accept_types(self) -> str:
        cached = getattr(self, "_accept_cache", None)
        if cached is not None and cached[0] == len(list(self.registry)):
            return cached[1]
        types: list[str] = []
        for pkg in self.registry:
            for t in pkg.content_types:
                if t not in types:
                    types.append(t)
        value = ", ".join(types)
        self._accept_cache = (len(list(self.registry)), value)
        return value

    # ---------------------------------------------------------------- timers
    def next_deadline(self) -> float | None:
        """When the runtime must call `handle_timers`: clean-up timers (Timer
        J, Timer K) count LAX_TIMER_SLACK late, so at low rates they do not
        wake the process once per request (they run with whatever wakes it)."""
        return self.timers.next_deadline(LAX_TIMER_SLACK)

    def handle_timers(self, now: float) -> None:
        self.engine.now = now
        try:
            self.timers.run_due(now)
            if self.engine._fanout:
                self.engine.drain_fanout(now, self.fanout_batch)
        except Exception:  # pragma: no cover - a bug must not stop the timer loop
            log.exception("timer callback failed")
            self.stats["internal_errors"] += 1

    def transport_failed(self, ct: ClientTransaction, now: float) -> None:
        self.engine.now = now
        udp = ct.udp_fallback
        if udp is not None and self.tx.fall_back_to_udp(ct, now):
            self.engine.tcp_refused(udp.host, udp.port, now)
            return
        self.tx.transport_failed(ct, now)

    # --------------------------------------------------------------- receive
    def receive(self, data: bytes, source: Address, local: tuple[str, int], now: float, *, stream: bool = False,
                parsed: Request | Response | None = None) -> None:
        """Handle one message; `parsed` is `data` already parsed by the caller
        (a worker parses before choosing the owner: not twice)."""
        self.engine.now = now
        if parsed is not None:
            msg = parsed
        else:
            try:
                msg = parse_message(data, stream=stream)
            except SipParseError as e:
                self.stats["parse_errors"] += 1
                self._reject_unparsable(data, e, source)
                return
        if isinstance(msg, Response):
            self.tx.receive_response(msg, now)
            return
        st = self._server_transaction(msg, source)
        if st is None:
            return
        CALL_ID.set(msg.call_id)
        self.requests_by_method[msg.method] = self.requests_by_method.get(msg.method, 0) + 1
        ctx = RequestContext(source, local[0], local[1])
        initial: tuple[str, str, int] | None = None
        try:
            if msg.method == "SUBSCRIBE" and msg.to.tag is None:
                initial = (msg.call_id, msg.from_.tag or "", msg.cseq.seq)
                if initial in self._recent_initial:
                    # The same request by another path (a forking proxy's copy, a
                    # client's new branch): a second dialog would double every NOTIFY.
                    self.respond(msg, st, Reply(482, "Loop Detected (merged request)"), now)
                    CALL_ID.set(None)
                    return
            self._dispatch(msg, st, ctx, now)
            if self.engine._fanout:
                self.engine.drain_fanout(now, self.fanout_batch)
        except Exception:
            log.exception("internal error handling %s %s", msg.method, msg.get("call-id"))
            self.stats["internal_errors"] += 1
            if st.last_response is None:
                self.respond(msg, st, Reply(500, "Server Internal Error", [("Retry-After", "5")]), now)
        if initial is not None and st.last_response is not None and st.last_response[0][8:9] == b"2":
            self._remember_initial(initial, now)
        # timers, storage and shutdown log without a request's Call-ID
        CALL_ID.set(None)

    def _server_transaction(self, req: Request, source: Address) -> ServerTransaction | None:
        """The request's new server transaction; None when it was answered
        here (malformed: 400) or is a retransmission the layer absorbed."""
        try:
            self._process_received(req, source)
            check_request(req)
        except SipParseError as e:
            self.stats["parse_errors"] += 1
            self._answer_malformed(req, e, source)
            return None
        return self.tx.receive_request(req, source)

    def refuse_overloaded(self, req: Request, source: Address, now: float, retry_after: int) -> None:
        """503 with Retry-After for a request the runtime cannot take in time
        (RFC 3261 §21.5.4); its retransmissions are absorbed as usual."""
        self.engine.now = now
        st = self._server_transaction(req, source)
        if st is None:
            return
        self.stats["overloaded"] = self.stats.get("overloaded", 0) + 1
        self.respond(req, st, Reply(503, "Service Unavailable", [("Retry-After", str(retry_after))]), now)

    def _remember_initial(self, key: tuple[str, str, int], now: float) -> None:
        """Only answered 2xx: a retry after a 401 that kept its CSeq (as some
        phones do) is a new request, not a merged one."""
        recent, queue = self._recent_initial, self._recent_order
        limit = now - MERGE_WINDOW
        while queue and queue[0][0] < limit:
            _, old = queue.popleft()
            if recent.get(old, now) < limit:
                del recent[old]
        recent[key] = now
        queue.append((now, key))

    def _process_received(self, req: Request, source: Address) -> None:
        """RFC 3261 §18.2.1 and RFC 3581: stamp received/rport on the top Via."""
        via = req.top_via
        add_received = via.host.strip("[]") != source.host
        has_rport = "rport" in via.params
        if not add_received and not has_rport:
            return
        params = via.params
        raw = via.raw
        lines = req._index["via"]
        appendable = has_rport and "received" not in params and raw.endswith(";rport") and lines[0] == raw
        params["received"] = source.host
        if has_rport:
            params["rport"] = str(source.port)
        if appendable:
            # The usual UA (RFC 3581 `;rport` last, no `received`): the rebuild
            # below would write the line as it came plus these two, so append them.
            via.raw = lines[0] = f"{raw}={params['rport']};received={source.host}"
            return
        parts = [raw.split(";", 1)[0]]
        for k, v in params.items():
            parts.append(";" + k if v is None else f";{k}={v}")
        via.raw = "".join(parts)
        # Keep the parsed Via cached; only the raw line the response copies changes.
        line = lines[0]
        if "," in line:
            parts = split_commas(line)
            parts[0] = via.raw
            lines[0] = ", ".join(parts)
        else:
            lines[0] = via.raw

    def _response_dest(self, req: Request, source: Address) -> Address:
        t = source.transport
        if t != "udp" and t != "UDP":  # reliable: answer on the connection
            if t != "tcp" and t != "tls":
                return source  # WebSocket: its connection or nothing (RFC 7118)
            # Should the connection be gone, the runtime opens one to the
            # received address and the Via's sent-by port (RFC 3261 §18.2.2).
            try:
                port = req.top_via.port
            except SipParseError:
                return source
            if port is None:
                port = 5061 if t == "tls" else 5060
            if port == source.port:
                return source
            return Address(t, source.host, port, source.conn)
        try:
            via = req.top_via
        except SipParseError:
            return source
        if "rport" in via.params:
            return source
        return Address(source.transport, source.host, via.port or 5060, None)

    def _reject_unparsable(self, data: bytes, err: SipParseError, source: Address) -> None:
        """A request too broken to parse: answer only if a response is routable."""
        if err.status == 0 or data[:4] == b"SIP/":
            self.stats["dropped"] += 1
            return
        try:
            # Parse headers leniently to find Via/From/To/Call-ID/CSeq.
            head = data.split(b"\r\n\r\n", 1)[0]
            first, _, rest = head.partition(b"\r\n")
            # Keep only what the answer copies: not the message's own
            # Content-Length (it may be the very error, e.g. larger than the
            # datagram, RFC 3261 §18.3), nor the bulk of a too-large header block.
            kept: list[bytes] = []
            keep = False
            for line in rest.split(b"\r\n"):
                if line[:1] not in (b" ", b"\t"):  # not a folded continuation
                    keep = line.split(b":", 1)[0].strip().lower() in _ANSWER_COPIES
                if keep:
                    kept.append(line)
            rest = b"\r\n".join(kept)
            lenient = parse_message(b"OPTIONS sip:x SIP/2.0\r\n" + rest + b"\r\nContent-Length: 0\r\n\r\n")
            assert isinstance(lenient, Request)
            if not source.reliable:
                lenient.top_via  # noqa: B018  (where a UDP answer goes)
            elif lenient.get("via") is None:
                raise SipParseError("no Via to copy")  # nothing could match the answer
        except Exception:
            self.stats["dropped"] += 1
            return
        if first.split(b" ", 1)[0] == b"ACK" or (lenient.get("cseq") or "").rstrip().upper().endswith("ACK"):
            self.stats["dropped"] += 1
            return
        data_out = build_response(lenient, err.status, err.reason, [SERVER_HEADER], to_tag=new_tag())
        self._count_response(err.status)
        self.tx.outbox.append((data_out, self._response_dest(lenient, source), None))

    def _answer_malformed(self, req: Request, err: SipParseError, source: Address) -> None:
        """400 & co. whenever the answer can reach the sender, even without a
        Call-ID or a valid CSeq (copied as they are, or left out): over a
        stream it goes back on the connection (a Via, even a malformed one, is
        copied so the sender can match it); over UDP the top Via must say where."""
        if req.method == "ACK":
            self.stats["dropped"] += 1
            return
        if not source.reliable:
            try:
                req.top_via  # noqa: B018
            except SipParseError:
                self.stats["dropped"] += 1
                return
        # Over a stream even a request without a Via is answered on its
        # connection (RFC 3261 §8.1.1: it is malformed, 400).
        data_out = build_response(req, err.status, err.reason, [SERVER_HEADER], to_tag=new_tag())
        self._count_response(err.status)
        self.tx.outbox.append((data_out, self._response_dest(req, source), None))

    def _count_response(self, status: int) -> None:
        self.responses_by_code[status] = self.responses_by_code.get(status, 0) + 1

    def respond(self, req: Request, st: ServerTransaction, reply: Reply, now: float) -> None:
        status = reply.status
        headers = [*reply.headers, SERVER_HEADER]
        to_tag = reply.to_tag or (new_tag() if status > 100 else None)
        data = build_response(req, status, reply.reason, headers, reply.body, to_tag=to_tag)
        counts = self.responses_by_code
        counts[status] = counts.get(status, 0) + 1
        self.tx.respond(st, data, self._response_dest(req, st.source), now, final=status >= 200)

    # -------------------------------------------------------------- dispatch
    def _dispatch(self, req: Request, st: ServerTransaction, ctx: RequestContext, now: float) -> None:
        method = req.method
        if method == "CANCEL":
            # Our non-INVITE transactions complete at once: nothing to cancel.
            # A CANCEL that matches one of them (same branch and sent-by) is
            # answered 200 and changes nothing (RFC 3261 §9.2); others 481.
            status, reason = 481, "Call/Transaction Does Not Exist"
            key = st.key
            if type(key) is str and key.endswith("CANCEL"):
                base = key[: -len("CANCEL")]
                if any(base + m in self.tx.server for m in _CANCELLABLE):
                    status, reason = 200, "OK"
            self.respond(req, st, Reply(status, reason), now)
            return
        try:
            scheme = req.uri.scheme
        except SipParseError as e:
            self.respond(req, st, Reply(400, e.reason), now)
            return
        if scheme not in SUPPORTED_SCHEMES:
            self.respond(req, st, Reply(416, "Unsupported URI Scheme"), now)
            return
        unsupported = req.option_tags("require") if "require" in req._index else None
        if unsupported:
            self.respond(req, st, Reply(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))]), now)
            return
        if method in self.auth_methods and not self._authenticate(req, st, ctx, now):
            return
        if self.route is not None:
            handled = self.route(self, req, st, ctx, now)
            if handled:
                return
        self.default_route(req, st, ctx, now)

    def _authenticate(self, req: Request, st: ServerTransaction, ctx: RequestContext, now: float) -> bool:
        """Digest-check `req`; answers 401/403 itself and returns False when it fails."""
        assert self.digest is not None
        try:
            realm = self.auth_realm or req.from_.uri.host.lower()
        except SipParseError as e:
            self.respond(req, st, Reply(400, e.reason), now)
            return False
        wall = now + self.engine.wall_offset
        if (self.credentials_miss is not None and not self._resuming
                and not self.digest.locked_out(ctx.source.host, wall) and self._park(req, st, ctx, realm)):
            return False
        result = self.digest.verify(req, wall, self._credentials_for, ctx.source.host, realm=realm)
        if result.ok:
            ctx.identity = f"sip:{result.username}@{result.domain}"
            return True
        if (result.reason == "wrong password" and self.credentials_miss is not None and not self._resuming
                and result.username and self._hold(req, st, ctx, result.username, result.domain or realm)):
            # The password may have changed (or the user gone) since the cache was
            # filled: the database is asked once (rate-limited by the runtime), then we retry.
            return False
        if result.rate_limited:
            log.warning("auth: %s locked out after repeated failures (%s %s)", ctx.source.host, req.method, req.get("call-id"))
            headers = [("Retry-After", str(int(result.retry_after or 60)))]
            self.respond(req, st, Reply(403, "Too Many Failed Authentication Attempts", headers), now)
            return False
        if result.reason and req.has("authorization"):
            log.info("auth: %s %s from %s failed: %s", req.method, req.get("call-id"), ctx.source.host, result.reason)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("auth: %s %s from %s challenged (%s)", req.method, req.get("call-id"), ctx.source.host,
                      result.reason or "no credentials")
        self.stats["auth_challenges"] = self.stats.get("auth_challenges", 0) + 1
        challenge = self.digest.challenge(wall, stale=result.stale, realm=realm)
        self.respond(req, st, Reply(401, "Unauthorized", challenge), now)
        return False

    def _credentials_for(self, username: str, domain: str):
        return self.credentials.get((username, domain.lower()))

    def _park(self, req: Request, st: ServerTransaction, ctx: RequestContext, realm: str) -> bool:
        """Hold a request whose digest username is not cached while the runtime
        asks the database, so a user added a moment ago is not refused."""
        assert self.digest is not None and self.credentials_miss is not None
        claimed = self.digest.claimed_user(req, realm)
        if claimed is None or self._credentials_for(*claimed) is not None:
            return False
        return self._hold(req, st, ctx, *claimed)

    def _hold(self, req: Request, st: ServerTransaction, ctx: RequestContext, user: str, domain: str) -> bool:
        """Park `req` until the runtime's lookup of user@domain answers (False: not now)."""
        assert self.credentials_miss is not None
        if self._n_parked >= MAX_PARKED or not self.credentials_miss(user, domain):
            return False
        self._parked.setdefault((user, domain.lower()), []).append((req, st, ctx))
        self._n_parked += 1
        return True

    def credentials_fetched(self, user: str, domain: str, row: Any, now: float, *, failed: bool = False) -> None:
        """The runtime's lookup finished (`row` None: no such user; `failed`: the
        database did not answer): cache it and let the requests that waited for
        it through authentication again."""
        self.engine.now = now
        if row is not None:
            self.credentials[(row.username, row.domain.lower())] = _credentials(row)
        elif not failed:
            self.credentials.pop((user, domain.lower()), None)  # removed from the subscriber table
        waiting = self._parked.pop((user, domain.lower()), [])
        self._n_parked -= len(waiting)
        self._resuming = True
        try:
            for req, st, ctx in waiting:
                CALL_ID.set(req.get("call-id"))
                try:
                    self._dispatch(req, st, ctx, now)
                except Exception:
                    log.exception("internal error handling %s %s", req.method, req.get("call-id"))
                    self.stats["internal_errors"] += 1
                    if st.last_response is None:
                        self.respond(req, st, Reply(500, "Server Internal Error", [("Retry-After", "5")]), now)
        finally:
            self._resuming = False
            CALL_ID.set(None)
        if self.engine._fanout:
            self.engine.drain_fanout(now, self.fanout_batch)

    def load_credentials(self, rows) -> None:
        """Replace the credential cache from `subscriber` rows."""
        self.credentials = {(r.username, r.domain.lower()): _credentials(r) for r in rows}

    def default_route(self, req: Request, st: ServerTransaction, ctx: RequestContext, now: float) -> None:
        method = req.method
        if method == "PUBLISH":
            self.handle_publish(req, st, ctx, now)
        elif method == "SUBSCRIBE":
            self.handle_subscribe(req, st, ctx, now)
        elif method == "OPTIONS":
            self.respond(req, st, Reply(200, "OK", [
                ("Allow", self.allow()),
                ("Accept", self.accept_types()),
                ("Allow-Events", self.engine.allow_events()),
                ("Supported", ""),
            ]), now)
        elif method == "REGISTER" and self.registrar is not None:
            status, reason, headers = self.registrar.handle(req, now)
            self.respond(req, st, Reply(status, reason, headers), now)
            self.registrar.flush_changes(now)
        else:
            self.respond(req, st, Reply(405, "Method Not Allowed", [("Allow", self.allow())]), now)

    def handle_publish(self, req: Request, st: ServerTransaction, ctx: RequestContext, now: float, sender_uri: str | None = None) -> None:
        if ctx.identity is not None:
            # An authenticated publisher may only publish its own state.
            try:
                own = self.engine.presentity_key(req.uri_text) == self.engine.presentity_key(ctx.identity)
            except SipParseError:
                own = False
            if not own:
                self.respond(req, st, Reply(403, "Forbidden: not your presentity"), now)
                return
        reply = self.engine.handle_publish(req, ctx, now, sender_uri)
        self.respond(req, st, reply, now)

    def handle_subscribe(self, req: Request, st: ServerTransaction, ctx: RequestContext, now: float, watcher_uri: str | None = None) -> None:
        reply, after = self.engine.handle_subscribe(req, ctx, now, watcher_uri or ctx.identity)
        if 200 <= reply.status < 300:
            reply.headers.append(("Allow-Events", self.engine.allow_events()))
        self.respond(req, st, reply, now)
        for fn in after:
            fn()
