"""Worker 0's management API when several workers run (`serve --workers N`).

A user of the RPC or of /metrics must not see a difference from one process:
per-presentity methods run in the presentity's owner, lists are concatenated
in one process's order, counters and metric samples are added up over every
worker. The calls to other workers go through `WorkerServer.call_worker`
(runtime/workers.py).
"""

from __future__ import annotations

import re
from typing import Any

from presenced.api.rpc import FAULT, RpcError, RpcService
from presenced.core.partition import owner_of


def _sum(a: Any, b: Any, key: str = "") -> Any:
    """Counters of two workers added up (dicts by key); `healthy` holds when
    it holds in both, the uptime is the longest, other non-numbers: the first set."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _sum(out[k], v, k) if k in out else v
        return out
    if isinstance(a, bool) or isinstance(b, bool):
        return (bool(a) and bool(b)) if key == "healthy" else (bool(a) or bool(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return max(a, b) if key == "uptime_seconds" else a + b
    return b if a is None else a


# Gauges that are per process, not additive: the smallest value wins.
_MIN_SERIES = ("presenced_up", "presenced_storage_healthy", "presenced_start_time_seconds",
               "presenced_compiled")
_FIRST_SERIES = ("presenced_build_info",)
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{.*\})? (\S+)$")


def merge_metrics(texts: list[str]) -> str:
    """Prometheus texts of every worker as one: samples with the same name and
    labels are added up (per-process gauges take the minimum), each family's
    samples stay together under its HELP/TYPE lines."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    order: list[str] = []
    for text in texts:
        current = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = ([], {})
                    order.append(name)
                if current != name:
                    current = name
                    if families[name][0] and len(families[name][0]) >= 2:
                        continue
                if len(families[name][0]) < 2:
                    families[name][0].append(line)
                continue
            m = _SAMPLE.match(line)
            if m is None or current is None:
                continue
            series, value = m.group(1) + (m.group(2) or ""), float(m.group(3))
            samples = families[current][1]
            if series not in samples:
                samples[series] = value
            elif m.group(1) in _MIN_SERIES:
                samples[series] = min(samples[series], value)
            elif m.group(1) not in _FIRST_SERIES:
                samples[series] += value
    out: list[str] = []
    for name in order:
        head, samples = families[name]
        out.extend(head)
        for series, v in samples.items():
            out.append(f"{series} {int(v) if v.is_integer() and abs(v) < 2**53 else repr(v)}")
    return "\n".join(out) + "\n"


class WorkerRpc(RpcService):
    """Worker 0's RPC: the same methods and answers as one process.

    Per-presentity methods run in the owner; lists are concatenated and
    counters added up over every worker; presence.cleanup and
    publish_cache_sync run in each; the rest is answered here."""

    BY_PRESENTITY = {"presence.refreshWatchers": ("uri", 0), "presence.updateWatchers": ("uri", 0),
                     "presence.watcher_list": ("presentity_uri", 1)}
    CONCAT = ("presence.presentity_list", "presence.presentity_show")
    SUM = ("presence.counters", "core.stats")
    EVERYWHERE = ("presence.cleanup", "presence.publish_cache_sync")

    async def call(self, name: str, params: Any = None) -> Any:
        server = self.server  # runtime.workers.WorkerServer
        local = super().call
        if name in self.methods:
            self._bind(self.methods[name], params)  # bad parameters: the same error, from here
        if name in self.BY_PRESENTITY:
            if name == "presence.refreshWatchers":
                await self._etag_free(params)
            owner = self._owner(params, *self.BY_PRESENTITY[name])
            if owner is not None and owner != server.index:
                return await server.call_worker(owner, name, params)
            return await local(name, params)
        if name == "presence.subscription_show":
            return await self._subscription_show(params)
        if name in self.CONCAT:
            if self._db_only("publications"):
                return await local(name, params)  # read from the shared database: once is all
            rows = [row for part in await server.gather(name, params, lambda: local(name, params)) for row in part]
            # each worker's rows come sorted by presentity; keep one process's order
            rows.sort(key=lambda r: (f"{r.get('user')}@{r.get('domain')}", r.get("event")))
            return rows
        if name in self.SUM:
            parts = await server.gather(name, params, lambda: local(name, params))
            total = parts[0]
            for p in parts[1:]:
                total = _sum(total, p)
            return total
        if name in self.EVERYWHERE:
            return (await server.gather(name, params, lambda: local(name, params)))[0]
        return await local(name, params)

    @staticmethod
    def _param(params: Any, name: str, pos: int) -> Any:
        if isinstance(params, dict):
            return params.get(name)
        return params[pos] if isinstance(params, list) and len(params) > pos else None

    async def _etag_free(self, params: Any) -> None:
        """refreshWatchers type 2 takes an ETag (`filename`) the caller chooses: as
        in one process it must not be another presentity's, in whichever worker."""
        etag = self._param(params, "filename", 4)
        uri = self._param(params, "uri", 0)
        if not isinstance(etag, str) or not isinstance(uri, str):
            return
        server = self.server

        async def mine() -> Any:
            return server.etag_owner(etag)

        try:
            key = self.engine.presentity_key(uri.strip())
        except Exception:
            return
        for held in await server.gather("etag.lookup", [etag], mine):
            if held is not None and held[0] != key:
                raise RpcError(FAULT, f"ETag {etag!r} belongs to another publication ({held[0]}, {held[1]})")

    def _owner(self, params: Any, name: str, pos: int) -> int | None:
        uri = self._param(params, name, pos)
        if not isinstance(uri, str):
            return None
        try:
            return owner_of(self.engine.presentity_key(uri.strip()), self.server.workers)
        except Exception:
            return None  # answered (with the error) here

    async def _subscription_show(self, params: Any) -> Any:
        server = self.server
        name = "presence.subscription_show"
        tag = self._param(params, "to_tag", 1)
        if isinstance(tag, str):
            owner = server.partition.owner_of_tag(tag)
            if owner != server.index:
                return await server.call_worker(owner, name, params)
        try:
            return await super().call(name, params)
        except RpcError as first:
            for i in range(server.workers):  # a tag made by one process: ask everyone
                if i == server.index:
                    continue
                try:
                    return await server.call_worker(i, name, params)
                except RpcError:
                    pass
            raise first


