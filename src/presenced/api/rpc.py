"""JSON-RPC 2.0 management methods.

Kamailio's presence RPC commands keep their names, positional parameters and
output fields (`presence.cleanup`, `presence.refreshWatchers`,
`presence.updateWatchers`, `presence.presentity_list`,
`presence.presentity_show`, `presence.watcher_list`,
`presence.publish_cache_sync`), so kamcmd-style scripts keep working.
Kamailio's list commands only see what sits in its shared-memory tables.
presenced's engine holds every publication and subscription it handles in
memory in every storage mode (the database is a write-through/write-back
copy), and in the database-is-the-truth modes (`publ_cache=0` for
publications, `subs_db_mode=3` for subscriptions) the lists and
`subscription_show` also read the database, so rows another server sharing
it wrote (presenced or Kamailio) are shown too. In the other modes such rows
appear after `presence.publish_cache_sync` (publications) or a restart.

presenced's own methods: `presence.subscription_show` (one dialog in full),
`presence.counters` (alias `core.stats`), `core.config` (effective
configuration, secrets redacted), `system.listMethods`, `system.methodHelp`.

Error codes: the JSON-RPC ones (-32700 parse error, -32600 invalid request,
-32601 unknown method, -32602 invalid parameters, -32603 internal error) and,
like Kamailio's `rpc->fault(ctx, 500, ...)`, 500 when a method fails and 404
when the object asked for does not exist.

Anything that may queue NOTIFYs drains the outbox (`server._flush()`) before
returning, so the NOTIFYs leave at once (after the commit in write-through
storage modes).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from presenced import __version__
from presenced.core.engine import HARD_STATE_SECONDS
from presenced.sip.errors import SipParseError

log = logging.getLogger("presenced.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
FAULT = 500          # Kamailio's generic RPC fault
NOT_FOUND = 404

MAX_BATCH = 100
# Methods that change state or send NOTIFYs: logged at INFO as an audit trail.
MUTATING = frozenset({
    "presence.cleanup", "presence.refreshWatchers", "presence.updateWatchers", "presence.publish_cache_sync",
})
PIDF_MANIPULATION = 1 << 4   # Kamailio xcap doc_type


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


_MISSING = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = "str"            # str | int
    required: bool = True
    choices: tuple[str, ...] | None = None


@dataclass
class Method:
    name: str
    fn: Callable[..., Awaitable[Any]]
    params: list[Param] = field(default_factory=list)
    doc: str = ""

    def signature(self) -> str:
        parts = [p.name if p.required else f"[{p.name}]" for p in self.params]
        return " ".join([self.name, *parts])


def _coerce(p: Param, v: Any) -> Any:
    if isinstance(v, bool):
        raise RpcError(INVALID_PARAMS, f"parameter '{p.name}' must be a {'number' if p.kind == 'int' else 'string'}")
    if p.kind == "int":
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v.strip())
        raise RpcError(INVALID_PARAMS, f"parameter '{p.name}' must be an integer")
    if isinstance(v, (int, float)):
        v = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    if not isinstance(v, str):
        raise RpcError(INVALID_PARAMS, f"parameter '{p.name}' must be a string")
    if p.choices is not None and v.lower() not in p.choices:
        raise RpcError(INVALID_PARAMS, f"parameter '{p.name}' must be one of: {', '.join(p.choices)}")
    return v.lower() if p.choices is not None else v


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


class RpcService:
    """The method table plus the JSON-RPC 2.0 envelope handling."""

    def __init__(self, server: Any, metrics: Any = None) -> None:
        self.server = server
        if metrics is None:
            from presenced.metrics import Metrics

            metrics = Metrics(server)
        self.metrics = metrics
        self.methods: dict[str, Method] = {}
        S, I = "str", "int"
        mode = ("basic", "full")
        self._add("presence.cleanup", self.presence_cleanup, [],
                  "Run the expiry of publications and subscriptions now and delete expired rows from the database.")
        self._add("presence.refreshWatchers", self.presence_refresh_watchers,
                  [Param("uri", S), Param("event", S), Param("type", I),
                   Param("file_uri", S, False), Param("filename", S, False)],
                  "type 0: re-evaluate authorization (pres-rules reloaded); 1: re-NOTIFY the current state; "
                  "2 (with file_uri, filename): load the pidf-manipulation document as a hard-state publication.")
        self._add("presence.updateWatchers", self.presence_update_watchers,
                  [Param("uri", S), Param("event", S)],
                  "Reload the presentity's pres-rules and apply them to its watchers (NOTIFYs the changed ones).")
        self._add("presence.presentity_list", self.presence_presentity_list,
                  [Param("mode", S, False)],
                  "All publications; 'full' adds received_time, priority, ruid, body, hashid.")
        self._add("presence.presentity_show", self.presence_presentity_show,
                  [Param("mode", S, choices=mode), Param("user", S), Param("domain", S)],
                  "Publications of user@domain ('*' matches any; case-insensitive).")
        self._add("presence.watcher_list", self.presence_watcher_list,
                  [Param("mode", S, choices=mode), Param("presentity_uri", S)],
                  "Subscriptions to a presentity URI (case-insensitive).")
        self._add("presence.publish_cache_sync", self.presence_publish_cache_sync, [],
                  "Re-read publications from the database (rows added or removed by others) and NOTIFY on changes.")
        self._add("presence.subscription_show", self.presence_subscription_show,
                  [Param("callid", S), Param("to_tag", S), Param("from_tag", S), Param("event", S, False)],
                  "One subscription in full: dialog, route set, CSeqs, versions, last NOTIFY result.")
        self._add("presence.counters", self.presence_counters, [], "Every counter presenced keeps.")
        self._add("core.stats", self.presence_counters, [], "Alias of presence.counters.")
        self._add("core.config", self.core_config, [], "The effective configuration (secrets redacted).")
        self._add("core.version", self.core_version, [], "presenced version.")
        self._add("system.listMethods", self.system_list_methods, [], "Names of all RPC methods.")
        self._add("system.methodHelp", self.system_method_help, [Param("method", S)], "Parameters and help of a method.")

    def _add(self, name: str, fn: Callable[..., Awaitable[Any]], params: list[Param], doc: str) -> None:
        self.methods[name] = Method(name, fn, params, doc)

    # ------------------------------------------------------------- helpers
    @property
    def core(self) -> Any:
        return self.server.core

    @property
    def engine(self) -> Any:
        return self.server.core.engine

    def _now(self) -> float:
        loop = getattr(self.server, "loop", None)
        return loop.time() if loop is not None else time.monotonic()

    def _wall(self, now: float) -> float:
        off = self.engine.wall_offset
        return off if off else time.time() - now

    def _flush(self) -> None:
        flush = getattr(self.server, "_flush", None)
        if flush is not None and getattr(self.server, "loop", None) is not None:
            flush()

    def _package(self, event: str) -> Any:
        pkg = self.engine.registry.get(event.strip())
        if pkg is None:
            raise RpcError(FAULT, f"Unknown event package '{event}'")
        return pkg

    def _presentity(self, uri: str) -> str:
        if not uri.strip():
            raise RpcError(INVALID_PARAMS, "Empty presentity URI")
        try:
            return self.engine.presentity_key(uri.strip())
        except SipParseError as e:
            raise RpcError(INVALID_PARAMS, f"Invalid presentity URI: {e.reason}") from None

    # -------------------------------------------------------------- calls
    async def call(self, name: str, params: Any = None) -> Any:
        m = self.methods.get(name)
        if m is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {name}")
        args = self._bind(m, params)
        return await m.fn(*args)

    def _bind(self, m: Method, params: Any) -> list[Any]:
        if params is None:
            values: list[Any] = [_MISSING] * len(m.params)
        elif isinstance(params, dict):
            known = {p.name for p in m.params}
            unknown = sorted(set(params) - known)
            if unknown:
                raise RpcError(INVALID_PARAMS, f"unknown parameter(s) for {m.name}: {', '.join(unknown)}")
            values = [params.get(p.name, _MISSING) for p in m.params]
        elif isinstance(params, list):
            if len(params) > len(m.params):
                raise RpcError(INVALID_PARAMS, f"too many parameters: {m.signature()}")
            values = list(params) + [_MISSING] * (len(m.params) - len(params))
        else:
            raise RpcError(INVALID_PARAMS, "params must be an array or an object")
        out: list[Any] = []
        for p, v in zip(m.params, values):
            if v is _MISSING or v is None:
                if p.required:
                    raise RpcError(INVALID_PARAMS, f"missing parameter '{p.name}': {m.signature()}")
                out.append(None)
                continue
            out.append(_coerce(p, v))
        return out

    async def handle(self, raw: bytes, peer: str = "") -> bytes | None:
        """One HTTP body in, one HTTP body out (None: only notifications, nothing to say)."""
        try:
            msg = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return self._encode(self._error(None, RpcError(PARSE_ERROR, "Parse error")))
        if isinstance(msg, list):
            if not msg:
                return self._encode(self._error(None, RpcError(INVALID_REQUEST, "Invalid Request: empty batch")))
            if len(msg) > MAX_BATCH:
                return self._encode(self._error(None, RpcError(INVALID_REQUEST, f"Invalid Request: batch larger than {MAX_BATCH}")))
            replies = []
            for item in msg:
                r = await self._one(item, peer)
                if r is not None:
                    replies.append(r)
            return self._encode(replies) if replies else None
        r = await self._one(msg, peer)
        return self._encode(r) if r is not None else None

    @staticmethod
    def _encode(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8")

    @staticmethod
    def _error(id_: Any, e: RpcError) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "error": e.as_dict(), "id": id_}

    async def _one(self, req: Any, peer: str = "") -> dict[str, Any] | None:
        if not isinstance(req, dict):
            return self._error(None, RpcError(INVALID_REQUEST, "Invalid Request: not an object"))
        id_ = req.get("id", _MISSING)
        id_ok = id_ is _MISSING or id_ is None or (isinstance(id_, (str, int, float)) and not isinstance(id_, bool))
        if not id_ok:
            return self._error(None, RpcError(INVALID_REQUEST, "Invalid Request: id must be a string, a number or null"))
        rid = None if id_ is _MISSING else id_
        if req.get("jsonrpc") != "2.0":
            return self._error(rid, RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"'))
        method = req.get("method")
        if not isinstance(method, str):
            return self._error(rid, RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a string'))
        params = req.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            return self._error(rid, RpcError(INVALID_REQUEST, 'Invalid Request: "params" must be an array or an object'))
        if method in MUTATING:
            log.info("RPC %s %s from %s", method, json.dumps(params, default=str)[:200] if params else "",
                     peer or "?")
        try:
            result = await self.call(method, params)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "result": result, "id": rid}
        except RpcError as e:
            reply = self._error(rid, e)
        except Exception as e:  # a bug in a method must not take the API down
            log.exception("RPC %s failed", method)
            reply = self._error(rid, RpcError(INTERNAL_ERROR, f"Internal error: {type(e).__name__}: {e}"))
        return None if id_ is _MISSING else reply

    # ----------------------------------------------------------- Kamailio
    async def presence_cleanup(self) -> str:
        """Kamailio runs its cleaners once. Here every record has its own
        deadline, so this runs what is due (with the timeout NOTIFYs Kamailio
        skips), sweeps anything left behind, flushes and cleans the database."""
        engine = self.engine
        now = self._now()
        self.core.handle_timers(now)
        for pub in [p for p in engine.etags.values() if p.expires_at <= now]:
            engine._publication_expired(now, pub)
        for sub in [s for s in engine.subs_by_dialog.values() if s.expires_at <= now]:
            engine._subscription_expired(now, sub)
        from presenced.storage.base import PENDING_AUTH_MAX_AGE

        engine.purge_pending_watchers(now, PENDING_AUTH_MAX_AGE)
        self._flush()
        p = getattr(self.server, "persistence", None)
        if p is not None:
            if not await p.flush():
                raise RpcError(FAULT, f"storage write failed: {p.last_error}")
            from presenced.runtime.persistence import CLEAN_TIMEOUT, bounded

            try:
                await bounded(p.store.delete_expired(int(time.time())), min(CLEAN_TIMEOUT, 10 * p.write_timeout))
            except Exception as e:
                raise RpcError(FAULT, f"deleting expired rows failed: {e}") from None
        return "Reload OK"

    async def presence_refresh_watchers(self, uri: str, event: str, type_: int,
                                        file_uri: str | None, filename: str | None) -> dict[str, Any]:
        from presenced.api.presence import active_watchers, check_refresh_args

        if not event.strip():
            raise RpcError(INVALID_PARAMS, "Empty event parameter")
        pres = self._presentity(uri)
        try:
            check_refresh_args(type_, file_uri, filename)
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None
        pkg = self._package(event)
        await self._reload_state(pres, pkg.key)
        if type_ == 0:
            await self._reload_rules(pres)
            auth = self.core.authorizer
            if auth is None or not auth.has_rules(pres):
                raise RpcError(NOT_FOUND, f"{pres} has no pres-rules document: nothing to re-evaluate")
            n = self.engine.pres_refresh_watchers(pres, pkg.key, 0, self._now())
            self._flush()
            return {"changed": n}
        if type_ == 2:
            stored = await self._hard_state(pres, pkg, file_uri or "", filename or "")
            self._flush()
            notified = active_watchers(self.engine, pres, pkg.key) if stored != "absent" else 0
            return {"publication": stored, "notified": notified}
        n = self.engine.pres_refresh_watchers(pres, pkg.key, 1, self._now())
        self._flush()
        return {"notified": n}

    async def _reload_state(self, pres: str, event: str) -> None:
        """DB-only modes: act on every watcher in the database, not only on the
        ones that subscribed through this process."""
        reload = getattr(self.server, "reload_presentity", None)
        if reload is None:
            return
        try:
            await reload(pres, event)
        except Exception as e:
            raise RpcError(FAULT, f"reading {pres} from the database failed: {str(e) or type(e).__name__}") from None

    async def _reload_rules(self, pres: str) -> None:
        load = getattr(self.server, "load_rules", None)
        if load is None or getattr(self.server, "persistence", None) is None:
            return
        from presenced.runtime.persistence import bounded

        try:
            await bounded(load(pres), self.server.persistence.write_timeout)
        except Exception as e:
            raise RpcError(FAULT, f"loading pres-rules of {pres} failed: {e}") from None

    async def _hard_state(self, pres: str, pkg: Any, file_uri: str, filename: str) -> str:
        """refreshWatchers type 2. The document comes from a local file (file:// or
        a path that exists) or else, with a database, from the presentity's
        pidf-manipulation row in the xcap table, which is where Kamailio reads it
        (there file_uri is the XCAP document URI). No document removes the
        publication `filename`."""
        import os

        from presenced.api.presence import DocumentNotFound, file_uri_path, read_hard_state
        from presenced.runtime.persistence import bounded, split_aor

        try:
            path = file_uri_path(file_uri)
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None
        p = getattr(self.server, "persistence", None)
        doc: bytes | None
        if file_uri.lower().startswith("file:") or os.path.exists(path) or p is None:
            try:
                doc = read_hard_state(path)
            except DocumentNotFound as e:
                raise RpcError(NOT_FOUND, f"{e} (and no database to look up an XCAP document)"
                               if p is None else str(e)) from None
            except ValueError as e:
                raise RpcError(FAULT, str(e)) from None
        else:
            user, domain = split_aor(pres)
            try:
                row = await bounded(p.store.get_xcap(user, domain, PIDF_MANIPULATION), p.write_timeout)
            except Exception as e:
                raise RpcError(FAULT, f"retrieving pidf-manipulation document failed: {e}") from None
            doc = bytes(row.doc) if row is not None and row.doc else None
        try:
            result = self.engine.set_hard_state(pres, pkg.key, filename, doc, self._now())
        except ValueError as e:
            raise RpcError(FAULT, str(e)) from None
        return result  # "stored", "removed", or "absent" (nothing had that ETag)

    async def presence_update_watchers(self, uri: str, event: str) -> dict[str, Any]:
        pres = self._presentity(uri)
        pkg = self._package(event)
        await self._reload_state(pres, pkg.key)
        await self._reload_rules(pres)
        n = self.engine.pres_update_watchers(pres, pkg.key, self._now())
        self._flush()
        return {"changed": n}

    async def _read_db(self, what: str, read: Callable[[Any], Awaitable[Any]]) -> Any:
        """Read from the store under the commit lock, so no journal is half-written
        while we look; what changed in memory meanwhile is still in the journal."""
        from presenced.runtime.persistence import bounded

        p = self.server.persistence
        lock = getattr(p, "_lock", None)
        try:
            if lock is not None:
                async with lock:
                    return await bounded(read(p.store), p.write_timeout)
            return await bounded(read(p.store), p.write_timeout)
        except Exception as e:
            raise RpcError(FAULT, f"reading {what} from the database failed: {str(e) or type(e).__name__}") from None

    def _db_only(self, kind: str) -> bool:
        """publ_cache=0 / subs_db_mode=3: the database is the truth, and may hold
        rows another server (presenced or Kamailio) wrote that are not in memory."""
        p = getattr(self.server, "persistence", None)
        if p is None:
            return False
        return p.publ_cache == 0 if kind == "publications" else p.subs_db_mode == 3

    async def _pub_rows(self, match: Callable[[str, str], bool], full: bool) -> list[dict[str, Any]]:
        from presenced.runtime.persistence import publication_row

        now = self._now()
        wall = self._wall(now)
        pubs = sorted(self.engine.etags.values(), key=lambda p: (p.pres_uri, p.event, p.seq))
        rows = [publication_row(pub, wall) for pub in pubs]
        if self._db_only("publications"):
            stored = await self._read_db("publications", lambda st: st.load_presentities(int(time.time())))
            journal = self.engine.journal
            deleted = set(journal.pub_deletes) if journal is not None else set()
            extra = [r for r in stored if r.etag not in self.engine.etags and r.etag not in deleted]
            if extra:
                extra.sort(key=lambda r: (r.domain, r.username, r.event, r.received_time))
                rows.extend(extra)
                order = {}
                for r in rows:  # memory order kept; a presentity's stored-only rows follow its own
                    order.setdefault((r.username, r.domain, r.event), len(order))
                rows.sort(key=lambda r: order[(r.username, r.domain, r.event)])
        out = []
        for r in rows:
            if not match(r.username, r.domain):
                continue
            row: dict[str, Any] = {
                "user": r.username, "domain": r.domain, "event": r.event, "etag": r.etag,
                "sender": r.sender, "expires": r.expires,
            }
            if full:
                row.update({
                    "received_time": r.received_time, "priority": r.priority, "ruid": r.ruid,
                    "body": _text(bytes(r.body)), "hashid": zlib.crc32(f"{r.username}@{r.domain}".encode()) & 0xFFFF,
                })
            out.append(row)
        return out

    async def presence_presentity_list(self, mode: str | None) -> list[dict[str, Any]]:
        return await self._pub_rows(lambda u, d: True, (mode or "").lower() == "full")

    async def presence_presentity_show(self, mode: str, user: str, domain: str) -> list[dict[str, Any]]:
        u, d = user.lower(), domain.lower()

        def match(pu: str, pd: str) -> bool:
            return (u == "*" or pu.lower() == u) and (d == "*" or pd.lower() == d)

        return await self._pub_rows(match, mode == "full")

    async def presence_watcher_list(self, mode: str, presentity_uri: str) -> list[dict[str, Any]]:
        from presenced.runtime.persistence import subscription_rows

        want = presentity_uri.strip()
        if not want:
            raise RpcError(INVALID_PARAMS, "Empty presentity URI")
        try:
            want = self.engine.presentity_key(want)
        except SipParseError:
            pass
        key = want
        want = want.lower()
        now = self._now()
        wall = self._wall(now)
        full = mode == "full"
        subs = sorted(self.engine.subs_by_dialog.values(), key=lambda s: (s.event, s.created))
        rows = [subscription_rows(sub, wall)[0] for sub in subs if sub.pres_uri.lower() == want]
        if self._db_only("subscriptions"):
            events = sorted({pkg.key for pkg in self.engine.registry})

            async def read(store: Any) -> list:
                found = []
                for ev in events:
                    found.extend(await store.load_subscriptions_for(key, ev, int(time.time())))
                return found

            stored = await self._read_db("subscriptions", read)
            journal = self.engine.journal
            gone = {(k[0], k[1], k[2]) for k, (_, alive) in (journal.subs.items() if journal is not None else ()) if not alive}
            known = {(s.call_id, s.local_tag, s.remote_tag) for s in self.engine.subs_by_dialog.values()}
            for r, _ext in stored:
                dk = (r.callid, r.to_tag, r.from_tag)
                if dk not in known and dk not in gone and r.presentity_uri.lower() == want:
                    rows.append(r)
                    known.add(dk)
        return [self._watcher_row(r, full) for r in rows]

    @staticmethod
    def _watcher_row(r: Any, full: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "pres_uri": r.presentity_uri, "to_user": r.to_user, "to_domain": r.to_domain,
            "from_user": r.from_user, "from_domain": r.from_domain,
            "watcher_user": r.watcher_username, "watcher_domain": r.watcher_domain,
            "event": r.event, "event_id": r.event_id or "", "contact": r.contact, "callid": r.callid,
            "user_agent": r.user_agent, "expires": r.expires, "status": r.status,
            "version": r.version, "flags": r.flags,
        }
        if full:
            row.update({
                "reason": r.reason or "", "to_tag": r.to_tag, "from_tag": r.from_tag,
                "socket": r.socket_info, "local_contact": r.local_contact,
                "record_route": r.record_route or "", "auth_rules": "",
                "local_cseq": r.local_cseq, "remote_cseq": r.remote_cseq, "recv_event": 0,
                "updated": r.updated, "updated_winfo": r.updated_winfo,
            })
        return row

    async def presence_publish_cache_sync(self) -> str:
        """Kamailio rebuilds its publish index from the database (publ_cache=1).
        presenced keeps whole publications in memory, so it re-reads the rows:
        publications someone else inserted appear, ones deleted disappear, and
        the watchers of every changed presentity are notified."""
        from presenced.core.state import Publication
        from presenced.runtime.persistence import join_aor

        p = getattr(self.server, "persistence", None)
        if p is None or not p.persist_publications:
            return "OK"  # nothing but memory: nothing to sync from
        if not await p.flush():
            raise RpcError(FAULT, f"storage write failed: {p.last_error}")
        # Under the commit lock nothing is half-written while we read (and a stalled
        # database cannot keep the lock); what changes in memory meanwhile stays in
        # the journal and is skipped below.
        rows = await self._read_db("publications", lambda st: st.load_presentities(int(time.time())))
        engine = self.engine
        journal = engine.journal
        pending_saves = set(journal.pubs) if journal is not None else set()
        pending_deletes = set(journal.pub_deletes) if journal is not None else set()
        now = self._now()
        wall = self._wall(now)
        in_db: set[str] = set()
        changed: set[tuple[str, str]] = set()
        owns = p.owns
        for r in rows:
            pkg = engine.registry.get(r.event)
            if pkg is None:
                continue
            in_db.add(r.etag)
            if r.etag in engine.etags or r.etag in pending_deletes:
                continue
            expires_at = (r.expires - wall) if r.expires > 0 else now + HARD_STATE_SECONDS
            if expires_at <= now:
                continue
            aor = join_aor(r.username, r.domain)
            if owns is not None and not owns(aor):
                continue  # another worker's presentity
            engine._pub_seq += 1
            pub = Publication(
                etag=r.etag, pres_uri=aor, entity=aor, event=pkg.key, body=bytes(r.body),
                content_type=pkg.content_types[0] if pkg.content_types else "", expires_at=expires_at,
                received=r.received_time - wall, seq=engine._pub_seq, sender=r.sender or None, priority=r.priority,
            )
            engine.index_publication(pub)
            changed.add((aor, pkg.key))
        gone = [
            x for x in engine.etags.values()
            # rows are stored with whole-second expiry: leave the about-to-expire to their timers
            if x.etag not in in_db and x.etag not in pending_saves and x.expires_at - now > 2
        ]
        for pub in gone:
            changed.add((pub.pres_uri, pub.event))
            engine._remove_publication(pub)
        for pres, event in sorted(changed):
            engine.state_changed(pres, event, now)
        self._flush()
        return "OK"

    # ----------------------------------------------------------- presenced
    async def presence_subscription_show(self, callid: str, to_tag: str, from_tag: str, event: str | None) -> dict[str, Any]:
        subs = [
            s for s in self.engine.subs_by_dialog.values()
            if s.call_id == callid and s.local_tag == to_tag and s.remote_tag == from_tag
        ]
        if not subs and self._db_only("subscriptions"):
            # DB-only mode: a dialog another server wrote is shown from its row.
            from presenced.runtime.persistence import _subscription_from_row

            found = await self._read_db("the subscription", lambda st: st.load_subscription(callid, to_tag, from_tag))
            journal = self.engine.journal
            if found is not None:
                sub = _subscription_from_row(self.engine, found[0], found[1], self._now(), 0)
                deleted = journal is not None and any(
                    not alive and k[:3] == (callid, to_tag, from_tag) for k, (_, alive) in journal.subs.items())
                if sub is not None and not deleted:
                    subs = [sub]
        if event is not None:
            pkg = self._package(event)
            subs = [s for s in subs if s.event == pkg.key]
        if not subs:
            raise RpcError(NOT_FOUND, "Subscription not found")
        if len(subs) > 1:
            raise RpcError(INVALID_PARAMS, f"{len(subs)} subscriptions share this dialog; give the event as 4th parameter",
                           [f"{s.event};id={s.event_id}" if s.event_id else s.event for s in subs])
        return self._subscription(subs[0])

    def _subscription(self, s: Any) -> dict[str, Any]:
        now = self._now()
        wall = self._wall(now)
        src = s.source
        conn = getattr(src, "conn", None) if src is not None else None
        return {
            "callid": s.call_id, "from_tag": s.remote_tag, "to_tag": s.local_tag,
            "event": s.event, "event_id": s.event_id, "event_header": s.event_header,
            "pres_uri": s.pres_uri, "entity": s.entity,
            "watcher_uri": s.watcher_uri, "watcher_display": s.watcher_display,
            "status": s.status, "reason": s.reason,
            "expires": int(s.expires_at + wall), "expires_in": max(0, int(s.expires_at - now)),
            "created": int(s.created + wall),
            "remote_target": s.remote_target, "route_set": list(s.route_set),
            "local_contact": s.local_contact,
            "notify_from": s.from_header, "notify_to": s.to_header,
            "remote_cseq": s.remote_cseq, "local_cseq": s.local_cseq,
            "version": s.version,
            "source": f"{src.transport}:{src.host}:{src.port}" if src is not None else None,
            "connection_open": bool(getattr(conn, "is_open", False)) if conn is not None and src.reliable else None,
            "socket": f"{src.transport if src else 'udp'}:{s.local_host}:{s.local_port}",
            "accept": list(s.accept) if s.accept is not None else None,
            "watcher_event": s.watcher_event,
            "notifies_sent": s.notifies_sent,
            "last_notify_status": s.last_notify_status,
        }

    async def presence_counters(self) -> dict[str, Any]:
        return self.metrics.snapshot()

    async def core_config(self) -> dict[str, Any]:
        cfg = getattr(self.server, "cfg", None)
        as_dict = getattr(cfg, "as_dict", None)
        if as_dict is None:
            return {}
        return as_dict(redact=True)

    async def core_version(self) -> str:
        return f"presenced {__version__}"

    async def system_list_methods(self) -> list[str]:
        return sorted(self.methods)

    async def system_method_help(self, method: str) -> str:
        m = self.methods.get(method)
        if m is None:
            raise RpcError(NOT_FOUND, f"Method not found: {method}")
        return f"{m.signature()} — {m.doc}"
