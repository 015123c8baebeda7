"""The presence module's functions as a Python API.

Mirrors what Kamailio exports to its routing script (handle_publish,
handle_subscribe, pres_auth_status, pres_has_subscribers,
pres_refresh_watchers, pres_update_watchers, and presence_xml's
pres_check_basic / pres_check_activities), over one sans-I/O `SipCore`.
NOTIFYs these calls cause are queued in `core.outbox` like any other output,
so the same code works inside the server and in a unit test.

Example (a routing hook that takes the watcher identity from
P-Asserted-Identity, like Kamailio's `handle_subscribe("$ai")`)::

    # myroute.py, used as: presenced serve --route myroute:route
    def route(ctx):
        if ctx.method == "SUBSCRIBE":
            pai = ctx.request.get("P-Asserted-Identity")
            ctx.handle_subscribe(watcher_uri=pai.strip("<>") if pai else None)
        elif ctx.method == "PUBLISH":
            ctx.handle_publish()
        elif ctx.method == "MESSAGE":
            ctx.reply(403, "Forbidden")
        else:
            ctx.default()

    # optional, Kamailio's event_route[presence:notify-reply]:
    def notify_reply(subscription, response):   # response is None on timeout
        return response is not None and response.status == 480   # True: delete it
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
import urllib.parse
from typing import Any, Callable

from presenced.core.engine import Reply, RequestContext
from presenced.core.server import SipCore
from presenced.events.base import EventPackage
from presenced.events.formats import pidf
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request
from presenced.transaction.layer import Address, ServerTransaction


class Presence:
    def __init__(self, core: SipCore, clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.engine = core.engine
        self.clock = clock

    # -- requests (outside a route hook: the caller owns the transaction) ----
    def handle_publish(self, request: Request, sender_uri: str | None = None, source: Address | None = None) -> Reply:
        ctx = RequestContext(source or Address("udp", "127.0.0.1", 5060), "127.0.0.1", 5060)
        return self.engine.handle_publish(request, ctx, self.clock(), sender_uri)

    def handle_subscribe(self, request: Request, watcher_uri: str | None = None, source: Address | None = None) -> Reply:
        """Returns the reply; the NOTIFYs it triggers are queued right away."""
        ctx = RequestContext(source or Address("udp", "127.0.0.1", 5060), "127.0.0.1", 5060)
        reply, after = self.engine.handle_subscribe(request, ctx, self.clock(), watcher_uri)
        for fn in after:
            fn()
        return reply

    # -- queries and triggers -------------------------------------------------
    def pres_has_subscribers(self, uri: str, event: str) -> bool:
        return self.engine.pres_has_subscribers(uri, event)

    def pres_auth_status(self, watcher_uri: str, presentity_uri: str) -> int:
        return self.engine.pres_auth_status(watcher_uri, presentity_uri)

    def pres_update_watchers(self, uri: str, event: str) -> int:
        return self.engine.pres_update_watchers(uri, event, self.clock())

    def pres_refresh_watchers(
        self, uri: str, event: str, type: int, file_uri: str | None = None, filename: str | None = None
    ) -> int:
        """Kamailio's three types; bad arguments raise ValueError with the reason.

        0: re-authorize the watchers against the presentity's pres-rules (there
        must be a document); 1: NOTIFY the current state to every active
        watcher; 2 (file_uri and filename): the PIDF document at file_uri (a
        file:// URI or a path) becomes the never-expiring publication with
        ETag `filename` (an empty file removes it), then as 1.
        Returns the number of watchers changed (0) or notified (1, 2).
        """
        check_refresh_args(type, file_uri, filename)
        pkg = self.core.registry.get(event)
        if pkg is None:
            raise ValueError(f"unknown event package {event!r}")
        try:
            pres = self.engine.presentity_key(uri)
        except SipParseError as e:
            raise ValueError(f"invalid presentity URI {uri!r}: {e.reason}") from None
        now = self.clock()
        if type == 0:
            auth = self.core.authorizer
            if auth is None or not auth.has_rules(pres):
                raise ValueError(f"{pres} has no pres-rules document: nothing to re-evaluate")
            return self.engine.pres_refresh_watchers(pres, pkg.key, 0, now)
        if type == 1:
            return self.engine.pres_refresh_watchers(pres, pkg.key, 1, now)
        assert file_uri is not None and filename is not None
        self.engine.set_hard_state(pres, pkg.key, filename, read_hard_state(file_uri_path(file_uri)), now)
        self.engine.drain_fanout(now)
        return active_watchers(self.engine, pres, pkg.key)

    def pres_check_basic(self, presentity_uri: str, status: str) -> bool:
        return pidf.pres_check_basic(self.engine.composed_bodies(presentity_uri, "presence", self.clock()), status)

    def pres_check_activities(self, presentity_uri: str, activity: str) -> bool:
        return pidf.pres_check_activities(self.engine.composed_bodies(presentity_uri, "presence", self.clock()), activity)

    def register_event(self, package: EventPackage) -> None:
        """Add an event package (Kamailio's add_event) to the running core."""
        self.core.registry.register(package)


MAX_DOCUMENT = 256 * 1024  # the largest PUBLISH body a TCP peer may send


class DocumentNotFound(ValueError):
    pass


def check_refresh_args(type_: int, file_uri: str | None, filename: str | None) -> None:
    """Kamailio's rule: type 2 only in the 5-argument form, and only type 2 there."""
    if isinstance(type_, bool) or type_ not in (0, 1, 2):
        raise ValueError("type must be 0 (authorization), 1 (state) or 2 (hard state from a file)")
    if type_ == 2:
        if not file_uri or not filename:
            raise ValueError("type 2 needs file_uri and filename")
    elif file_uri is not None or filename is not None:
        raise ValueError(f"file_uri and filename are only valid with type 2, not type {type_}")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def file_uri_path(file_uri: str) -> str:
    """`file:///x`, `file://localhost/x` or a plain path → the path; anything else is refused."""
    if file_uri.lower().startswith("file:"):
        parts = urllib.parse.urlsplit(file_uri)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"file_uri {file_uri!r}: only local files (file:///path) can be read")
        return urllib.parse.unquote(parts.path)
    if _SCHEME.match(file_uri):
        raise ValueError(f"file_uri {file_uri!r}: must be a file:// URI or a path (no other scheme is fetched)")
    return file_uri


def read_hard_state(path: str) -> bytes | None:
    """The document at `path`; None for an empty file (removes the hard state)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT + 1)
    except FileNotFoundError:
        raise DocumentNotFound(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_DOCUMENT:
        raise ValueError(f"{path} is larger than {MAX_DOCUMENT} bytes")
    return data if data.strip() else None


def active_watchers(engine: Any, pres: str, event: str) -> int:
    return sum(1 for s in engine.subs_by_presentity.get((pres, event), {}).values() if s.status == "active")


class RouteContext:
    """What a routing hook gets for one request (Kamailio's request_route)."""

    __slots__ = ("core", "request", "transaction", "context", "now", "api", "replied")

    def __init__(self, core: SipCore, request: Request, st: ServerTransaction, ctx: RequestContext, now: float) -> None:
        self.core = core
        self.request = request
        self.transaction = st
        self.context = ctx
        self.now = now
        self.api = Presence(core)
        self.replied = False

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def source(self) -> Address:
        return self.context.source

    def handle_publish(self, sender_uri: str | None = None) -> None:
        self.replied = True
        self.core.handle_publish(self.request, self.transaction, self.context, self.now, sender_uri)

    def handle_subscribe(self, watcher_uri: str | None = None) -> None:
        self.replied = True
        self.core.handle_subscribe(self.request, self.transaction, self.context, self.now, watcher_uri)

    def reply(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.replied = True
        self.core.respond(self.request, self.transaction, Reply(status, reason, list(headers or [])), self.now)

    def default(self) -> None:
        self.replied = True
        self.core.default_route(self.request, self.transaction, self.context, self.now)


def load_route(spec: str) -> Callable[[RouteContext], Any]:
    """`module:function` → the function; ValueError with a readable reason."""
    mod_name, _, func_name = spec.partition(":")
    if not mod_name or not func_name:
        raise ValueError(f"--route {spec}: expected MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so a route file next to the config works
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--route {spec}: cannot import {mod_name}: {e}") from e
    fn = getattr(mod, func_name, None)
    if not callable(fn):
        raise ValueError(f"--route {spec}: {mod_name} has no function {func_name}")
    return fn


def install_route(core: SipCore, fn: Callable[[RouteContext], Any]) -> None:
    """Make `fn` the request route; a request it leaves unanswered gets the default handling."""

    def route(core_: SipCore, req: Request, st: ServerTransaction, ctx: RequestContext, now: float) -> bool:
        rc = RouteContext(core_, req, st, ctx, now)
        fn(rc)
        if not rc.replied:
            core_.default_route(req, st, ctx, now)
        return True

    core.route = route
