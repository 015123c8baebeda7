"""Prometheus metrics (text exposition format 0.0.4) and the counters snapshot.

Almost everything is read at scrape time from the counters the server keeps
anyway (`core.stats`, `core.requests_by_method`, `core.responses_by_code`,
`core.tx.stats`, `core.engine.stats`, the TCP registry, `server.persistence`)
and from the live state (publications, subscriptions, transactions), so an
idle exporter costs nothing on the request path.

Two things cannot be derived from counters:

- PUBLISH→NOTIFY latency comes from the engine's `on_notify_latency` hook:
  the engine stamps each watcher a PUBLISH's change will notify with the
  PUBLISH's `now` (its arrival time) and, when the NOTIFY carrying that state
  is handed to the transaction layer — possibly later, from a fan-out batch;
  a coalesced NOTIFY keeps the oldest stamp — reports the difference. It
  includes fan-out queueing and body composition; not the wait for a
  write-through commit nor the socket write. With no hook set the engine
  stamps nothing.
- Storage operation latency and errors: `persistence.store` is wrapped in a
  proxy that times every awaited store call, by operation.

`Metrics.attach()` installs the hook and the proxy; `detach()` removes them.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Awaitable, Callable, Iterable

from presenced import __version__, _build

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Methods get their own label value; anything else a peer invents is "other",
# so a hostile client cannot create unbounded time series.
KNOWN_METHODS = frozenset({
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK",
    "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
})

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Store methods that are timed (everything else passes through untouched).
TIMED_STORE_OPS = frozenset({
    "connect", "ensure_schema", "ping", "write", "delete_expired",
    "load_presentities", "load_active_watchers", "load_watchers",
    "load_presentity", "load_subscriptions_for", "load_subscription", "find_etag",
    "get_xcap", "load_xcap", "put_xcap", "delete_xcap",
})


class Histogram:
    """A cumulative Prometheus histogram (seconds)."""

    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append((bound, running))
        out.append((math.inf, self.count))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_seconds": round(self.sum, 6),
            "buckets": {_fmt_value(b): n for b, n in self.cumulative()},
        }


# ----------------------------------------------------------------- exposition
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float | int, labels: dict[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_fmt_value(value)}")
        else:
            self.lines.append(f"{name} {_fmt_value(value)}")

    def histogram(self, name: str, h: Histogram, labels: dict[str, str] | None = None) -> None:
        base = dict(labels or {})
        for bound, n in h.cumulative():
            self.sample(f"{name}_bucket", n, {**base, "le": _fmt_value(bound)})
        self.sample(f"{name}_sum", h.sum, base or None)
        self.sample(f"{name}_count", h.count, base or None)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise


# ---------------------------------------------------------------- store proxy
class TimedStore:
    """Transparent proxy around a storage backend that times each operation."""

    def __init__(self, inner: Any, metrics: "Metrics") -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_metrics", metrics)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in TIMED_STORE_OPS and callable(attr):
            return self._metrics._timed(name, attr)
        if name == "write_now" and callable(attr):
            # Asked on every write-through PUBLISH: wrap once, found directly next time.
            timed = self._metrics._timed_now("write", attr)
            object.__setattr__(self, "write_now", timed)
            return timed
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return f"TimedStore({self._inner!r})"


# ------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.started = time.time()
        self.publish_notify_latency = Histogram(LATENCY_BUCKETS)
        self.storage_latency: dict[str, Histogram] = {}
        self.storage_errors: dict[str, int] = {}
        self.http_requests: dict[tuple[str, int], int] = {}
        self._proxied: tuple[Any, Any] | None = None  # (persistence, original store)

    # --------------------------------------------------------------- taps
    def attach(self) -> None:
        """Set the engine's latency hook and time the store's operations."""
        server = self.server
        engine = server.core.engine
        engine.on_notify_latency = self.observe_notify_latency
        p = getattr(server, "persistence", None)
        if p is not None and self._proxied is None and not isinstance(p.store, TimedStore):
            self._proxied = (p, p.store)
            p.store = TimedStore(p.store, self)

    def detach(self) -> None:
        engine = self.server.core.engine
        if engine.on_notify_latency == self.observe_notify_latency:
            engine.on_notify_latency = None
        if self._proxied is not None:
            p, store = self._proxied
            if isinstance(p.store, TimedStore):
                p.store = store
            self._proxied = None

    def observe_notify_latency(self, event: str, seconds: float) -> None:
        """The engine's `on_notify_latency` hook (one histogram, all packages)."""
        self.publish_notify_latency.observe(seconds)

    def _timed(self, op: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            # The operation runs as its own task so that a caller giving up on it
            # (persistence.bounded cancels after its timeout) is counted at once:
            # a driver stuck on a dead connection may never finish unwinding.
            task = asyncio.ensure_future(fn(*args, **kwargs))
            try:
                await asyncio.wait({task})
            except BaseException:
                task.cancel()
                task.add_done_callback(_retrieve)
                self._observe_op(op, t0, error=True)
                raise
            error = task.cancelled() or task.exception() is not None
            self._observe_op(op, t0, error=error)
            return task.result()

        return call

    def _timed_now(self, op: str, fn: Callable[..., bool]) -> Callable[..., bool]:
        """A store's synchronous fast path (`write_now`): counted as `op` when it
        did the work (True) or raised; False means the awaited `op` follows."""
        def call(*args: Any) -> bool:
            t0 = time.perf_counter()
            try:
                done = fn(*args)
            except BaseException:
                self._observe_op(op, t0, error=True)
                raise
            if done:
                self._observe_op(op, t0, error=False)
            return done

        return call

    def _observe_op(self, op: str, t0: float, error: bool) -> None:
        if error:
            self.storage_errors[op] = self.storage_errors.get(op, 0) + 1
        h = self.storage_latency.get(op)
        if h is None:
            h = self.storage_latency[op] = Histogram(STORAGE_BUCKETS)
        h.observe(time.perf_counter() - t0)

    def count_http(self, path: str, status: int) -> None:
        key = (path, status)
        self.http_requests[key] = self.http_requests.get(key, 0) + 1

    # ------------------------------------------------------------ reading
    def _state_counts(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        engine = self.server.core.engine
        pubs: dict[str, int] = {}
        subs: dict[tuple[str, str], int] = {}
        for pkg in engine.registry:
            if getattr(pkg, "publishable", False) and getattr(pkg, "template", None) is None:
                pubs[pkg.key] = 0
            subs[(pkg.key, "active")] = 0
            subs[(pkg.key, "pending")] = 0
        for pub in list(engine.etags.values()):
            pubs[pub.event] = pubs.get(pub.event, 0) + 1
        for sub in list(engine.subs_by_dialog.values()):
            k = (sub.event, sub.status)
            subs[k] = subs.get(k, 0) + 1
        return pubs, subs

    def _requests(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for method, n in self.server.core.requests_by_method.items():
            m = method if method in KNOWN_METHODS else "other"
            out[m] = out.get(m, 0) + n
        return out

    def _listening(self) -> bool:
        server = self.server
        if not getattr(server, "bound", None):
            return False
        for l in getattr(server, "udp", []):
            if l.transport is None or l.transport.is_closing():
                return False
        for s in getattr(getattr(server, "tcp", None), "servers", []):
            if not s.is_serving():
                return False
        return True

    def snapshot(self) -> dict[str, Any]:
        """Every counter as one JSON-friendly tree (the `presence.counters` RPC)."""
        server = self.server
        core = server.core
        engine = core.engine
        tx = core.tx
        pubs, subs = self._state_counts()
        sub_tree: dict[str, dict[str, int]] = {}
        for (event, state), n in sorted(subs.items()):
            sub_tree.setdefault(event, {})[state] = n
        tcp = getattr(server, "tcp", None)
        p = getattr(server, "persistence", None)
        storage: dict[str, Any] = {"backend": "memory"}
        if p is not None:
            store = p.store
            storage = {
                "backend": getattr(store, "url", type(store).__name__),
                "healthy": bool(p.healthy),
                "last_error": p.last_error,
                "commits": p.commits,
                "failures": p.failures,
                "held_messages": len(p.held),
                "pending_changes": bool(engine.journal),
            }
        storage["operations"] = {
            op: {"count": h.count, "errors": self.storage_errors.get(op, 0), "sum_seconds": round(h.sum, 6)}
            for op, h in sorted(self.storage_latency.items())
        }
        es = engine.stats
        return {
            "version": __version__,
            "hot_path": _build.MODE,
            "uptime_seconds": round(time.time() - self.started, 3),
            "sip": {
                "requests": dict(sorted(self._requests().items())),
                "responses": {str(c): n for c, n in sorted(core.responses_by_code.items())},
                **{k: v for k, v in core.stats.items()},
            },
            "presence": {
                "publications": dict(sorted(pubs.items())),
                "subscriptions": sub_tree,
                "authorization_decisions": len(engine.watchers),
                "publications_expired": es.get("publications_expired", 0),
                "subscriptions_expired": es.get("subscriptions_expired", 0),
            },
            "notify": {
                "sent": es.get("notify_sent", 0),
                "failed": es.get("notify_failed", 0),
                "timeouts": es.get("notify_timeout", 0),
                "retransmissions": tx.stats.get("notify_retransmits", 0),
                "publish_to_notify_latency": self.publish_notify_latency.as_dict(),
            },
            "transactions": {
                "server": len(tx.server),
                "client": len(tx.client),
                **{k: v for k, v in tx.stats.items() if k != "notify_retransmits"},
            },
            "tcp": {
                "connections": len(tcp.all) if tcp is not None else 0,
                "refused": getattr(tcp, "refused", 0),
                "framing_errors": getattr(tcp, "framing_errors", 0),
                "stalled_closed": getattr(tcp, "stalled", 0),
            },
            "storage": storage,
        }

    # ---------------------------------------------------------- exposition
    def render(self) -> str:
        server = self.server
        core = server.core
        engine = core.engine
        tx = core.tx
        es = engine.stats
        e = _Exposition()

        e.family("presenced_build_info", "gauge", "presenced version and hot-path build, compiled=mypyc|pure (always 1).")
        e.sample("presenced_build_info", 1, {"version": __version__, "compiled": "mypyc" if _build.MODE == "mypyc" else "pure"})
        e.family("presenced_compiled", "gauge", "1 when the hot path runs mypyc-compiled, 0 when pure Python.")
        e.sample("presenced_compiled", 1 if _build.MODE == "mypyc" else 0)
        e.family("presenced_start_time_seconds", "gauge", "Unix time the metrics exporter started.")
        e.sample("presenced_start_time_seconds", round(self.started, 3))
        e.family("presenced_up", "gauge", "1 when every SIP socket is listening.")
        e.sample("presenced_up", 1 if self._listening() else 0)

        # --- SIP traffic
        e.family("presenced_sip_requests_total", "counter", "SIP requests received (retransmissions excluded), by method.")
        for method, n in sorted(self._requests().items()):
            e.sample("presenced_sip_requests_total", n, {"method": method})
        e.family("presenced_sip_responses_total", "counter", "SIP responses sent, by status code.")
        for code, n in sorted(core.responses_by_code.items()):
            e.sample("presenced_sip_responses_total", n, {"code": str(code)})
        e.family("presenced_sip_parse_errors_total", "counter", "Malformed SIP messages received.")
        e.sample("presenced_sip_parse_errors_total", core.stats.get("parse_errors", 0))
        e.family("presenced_sip_dropped_total", "counter", "SIP messages dropped without a response.")
        e.sample("presenced_sip_dropped_total", core.stats.get("dropped", 0))
        e.family("presenced_sip_overloaded_total", "counter",
                 "Requests answered 503 because the database could not serve them in time (DB-only modes).")
        e.sample("presenced_sip_overloaded_total", core.stats.get("overloaded", 0))
        e.family("presenced_worker_forwarded_total", "counter",
                 "Messages read by a worker that does not own them and handed to the owner (--workers > 1).")
        e.sample("presenced_worker_forwarded_total", getattr(server, "forwarded", 0))
        e.family("presenced_internal_errors_total", "counter", "Requests that hit an internal error (answered 500).")
        e.sample("presenced_internal_errors_total", core.stats.get("internal_errors", 0))

        # --- presence state
        pubs, subs = self._state_counts()
        e.family("presenced_publications", "gauge", "Live publications (ETags), by event package.")
        for event, n in sorted(pubs.items()):
            e.sample("presenced_publications", n, {"event": event})
        e.family("presenced_subscriptions", "gauge", "Subscription dialogs, by event package and state.")
        for (event, state), n in sorted(subs.items()):
            e.sample("presenced_subscriptions", n, {"event": event, "state": state})
        e.family("presenced_authorization_decisions", "gauge", "Cached watcher authorization decisions.")
        e.sample("presenced_authorization_decisions", len(engine.watchers))
        e.family("presenced_publications_expired_total", "counter", "Publications removed because they expired.")
        e.sample("presenced_publications_expired_total", es.get("publications_expired", 0))
        e.family("presenced_subscriptions_expired_total", "counter", "Subscriptions ended because they expired.")
        e.sample("presenced_subscriptions_expired_total", es.get("subscriptions_expired", 0))

        # --- NOTIFY
        e.family("presenced_notify_sent_total", "counter", "NOTIFY requests sent (new transactions).")
        e.sample("presenced_notify_sent_total", es.get("notify_sent", 0))
        e.family("presenced_notify_failed_total", "counter", "NOTIFYs answered with an error response (or failing to build).")
        e.sample("presenced_notify_failed_total", es.get("notify_failed", 0))
        e.family("presenced_notify_retransmissions_total", "counter", "NOTIFY retransmissions over UDP (Timer E).")
        e.sample("presenced_notify_retransmissions_total", tx.stats.get("notify_retransmits", 0))
        e.family("presenced_notify_timeouts_total", "counter", "NOTIFY transactions that timed out or could not be sent.")
        e.sample("presenced_notify_timeouts_total", es.get("notify_timeout", 0))
        e.family("presenced_notify_udp_fallbacks_total", "counter",
                 "UDP watchers that refused TCP for a NOTIFY over 1300 bytes (RFC 3261 §18.1.1); "
                 "their large NOTIFYs go over UDP for 5 minutes.")
        e.sample("presenced_notify_udp_fallbacks_total", es.get("notify_udp_fallbacks", 0))
        e.family("presenced_publish_notify_latency_seconds", "histogram",
                 "Time from a PUBLISH's arrival to each NOTIFY it caused being handed to the transaction layer.")
        e.histogram("presenced_publish_notify_latency_seconds", self.publish_notify_latency)

        # --- transactions and transports
        e.family("presenced_transactions", "gauge", "Open SIP transactions, by kind.")
        e.sample("presenced_transactions", len(tx.server), {"kind": "server"})
        e.sample("presenced_transactions", len(tx.client), {"kind": "client"})
        e.family("presenced_retransmissions_absorbed_total", "counter", "Request retransmissions answered by the transaction layer.")
        e.sample("presenced_retransmissions_absorbed_total", tx.stats.get("retransmissions_absorbed", 0))
        e.family("presenced_client_transaction_timeouts_total", "counter", "Client transactions ended by Timer F.")
        e.sample("presenced_client_transaction_timeouts_total", tx.stats.get("client_timeouts", 0))
        e.family("presenced_stray_responses_total", "counter", "Responses matching no client transaction.")
        e.sample("presenced_stray_responses_total", tx.stats.get("stray_responses", 0))
        tcp = getattr(server, "tcp", None)
        e.family("presenced_tcp_connections", "gauge", "Open SIP TCP connections.")
        e.sample("presenced_tcp_connections", len(tcp.all) if tcp is not None else 0)
        e.family("presenced_tcp_refused_total", "counter", "TCP connections refused at the connection limit.")
        e.sample("presenced_tcp_refused_total", getattr(tcp, "refused", 0))
        e.family("presenced_tcp_framing_errors_total", "counter", "TCP connections closed on a framing error.")
        e.sample("presenced_tcp_framing_errors_total", getattr(tcp, "framing_errors", 0))
        e.family("presenced_tcp_stalled_closed_total", "counter",
                 "Stream connections dropped because the peer left 1 MiB of our messages unread.")
        e.sample("presenced_tcp_stalled_closed_total", getattr(tcp, "stalled", 0))

        # --- storage
        p = getattr(server, "persistence", None)
        e.family("presenced_storage_healthy", "gauge", "1 when the last storage transaction succeeded (1 in memory mode).")
        e.sample("presenced_storage_healthy", 1 if p is None or p.healthy else 0)
        e.family("presenced_storage_commits_total", "counter", "Storage transactions committed.")
        e.sample("presenced_storage_commits_total", p.commits if p is not None else 0)
        e.family("presenced_storage_failures_total", "counter", "Storage transactions that failed (retried later).")
        e.sample("presenced_storage_failures_total", p.failures if p is not None else 0)
        e.family("presenced_storage_operation_seconds", "histogram", "Duration of storage operations, by operation.")
        for op, h in sorted(self.storage_latency.items()):
            e.histogram("presenced_storage_operation_seconds", h, {"op": op})
        e.family("presenced_storage_errors_total", "counter", "Storage operations that raised (including timeouts), by operation.")
        for op in sorted(set(self.storage_errors) | set(self.storage_latency)):
            e.sample("presenced_storage_errors_total", self.storage_errors.get(op, 0), {"op": op})

        # --- the HTTP API itself
        e.family("presenced_http_requests_total", "counter", "Management API requests, by path and status.")
        for (path, status), n in sorted(self.http_requests.items()):
            e.sample("presenced_http_requests_total", n, {"path": path, "code": str(status)})
        return e.text()
