"""Which package handles an Event header (Kamailio's `search_event`)."""

from __future__ import annotations

from presenced.events.base import EventPackage
from presenced.sip.headers import Event

# Event parameters that never select a package variant: `id` names a
# subscription within a dialog (RFC 6665), the RFC 4235 dialog parameters
# narrow what is reported.
_NEUTRAL_PARAMS = frozenset({"id", "call-id", "to-tag", "from-tag", "include-session-description"})


class EventRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, list[EventPackage]] = {}
        self._by_key: dict[str, EventPackage] = {}
        self._allow_events: str | None = None

    def register(self, package: EventPackage) -> None:
        name = package.name if package.template is None else f"{package.name}.{package.template}"
        variants = self._by_name.setdefault(name, [])
        variants[:] = [p for p in variants if p.required_params != package.required_params]
        variants.append(package)
        self._allow_events = None
        self._by_key = {p.key: p for vs in self._by_name.values() for p in vs}
        # Most specific variant first, so `dialog;sla` wins over `dialog`.
        variants.sort(key=lambda p: -len(p.required_params))

    def lookup(self, event: Event) -> EventPackage | None:
        variants = self._by_name.get(event.name)
        if not variants:
            return None
        if not event.params:  # the usual case: the variant without required params
            for pkg in variants:
                if not pkg.required_params:
                    return pkg
            return None
        params = set(event.params) - _NEUTRAL_PARAMS
        for pkg in variants:
            if pkg.required_params <= params:
                return pkg
        return None

    def get(self, key: str) -> EventPackage | None:
        pkg = self._by_key.get(key)
        if pkg is not None:
            return pkg
        name, _, rest = key.partition(";")
        req = frozenset(p for p in rest.split(";") if p)
        for pkg in self._by_name.get(name, ()):
            if pkg.required_params == req:
                return pkg
        return None

    def names(self) -> list[str]:
        """Allow-Events values, in registration order."""
        out: list[str] = []
        for name, variants in self._by_name.items():
            if name not in out:
                out.append(name)
        return out

    def allow_events(self) -> str:
        """The Allow-Events value (sent on every SUBSCRIBE 2xx: kept until a register())."""
        if self._allow_events is None:
            self._allow_events = ", ".join(self.names())
        return self._allow_events

    def __iter__(self):
        for variants in self._by_name.values():
            yield from variants
