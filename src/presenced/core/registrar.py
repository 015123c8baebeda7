"""A minimal in-memory registrar (RFC 3261 §10.3).

Small set-ups and interop tests point phones straight at presenced, and
Linphone subscribes only after a successful REGISTER. Bindings also feed the
`reg` event package (RFC 3680).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from presenced.sip.errors import SipParseError
from presenced.sip.message import Request
from presenced.transaction.timers import TimerHeap


@dataclass(slots=True)
class Binding:
    aor: str
    contact: str        # contact URI
    raw: str            # full Contact value as registered
    call_id: str
    cseq: int
    expires_at: float
    q: str | None
    registered_at: float
    id: str
    key: str                   # what a later REGISTER matches it by (see _binding_key)
    instance: str | None       # +sip.instance (and reg-id), echoed in the 200
    timer: object = None
    event: str = "registered"  # RFC 3680 contact event of its last change: registered or refreshed


def _binding_key(uri_raw: str, params: dict[str, str | None]) -> tuple[str, str | None]:
    """A contact with `+sip.instance` is the same binding whatever its URI
    (RFC 5626 §6, RFC 5627): Linphone over TCP re-registers and un-registers
    from a new local port with the same instance id. Others match by URI
    (RFC 3261 §10.3)."""
    instance = params.get("+sip.instance")
    if not instance:
        return uri_raw, None
    reg_id = params.get("reg-id")
    echo = f'+sip.instance={instance}' + (f";reg-id={reg_id}" if reg_id else "")
    return "instance " + instance.strip('"').lower() + (f" {reg_id}" if reg_id else ""), echo


class Registrar:
    def __init__(
        self, timers: TimerHeap, min_expires: int = 60, max_expires: int = 3600, default_expires: int = 3600
    ) -> None:
        self.timers = timers
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.bindings: dict[str, dict[str, Binding]] = {}
        self._counter = 0
        self._pending: list[tuple[str, list[tuple[Binding, str]]]] = []
        self.on_change: Callable[[str, float, list[tuple[Binding, str]]], None] | None = None

    def handle(self, req: Request, now: float) -> tuple[int, str, list[tuple[str, str]]]:
        """Returns (status, reason, extra headers)."""
        try:
            aor = req.to.uri.aor()
            contacts = req.contacts
            call_id = req.call_id
            cseq = req.cseq.seq
            header_expires = req.expires
        except SipParseError as e:
            return e.status, e.reason, []
        current = self.bindings.setdefault(aor, {})
        changes: list[tuple[Binding, str]] = []
        if any(c.raw == "*" for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return 400, "Invalid wildcard Contact", []
            for b in list(current.values()):
                if b.call_id == call_id and cseq <= b.cseq:
                    return 500, "Stale CSeq", []
            for b in list(current.values()):
                self._drop(aor, b)
                changes.append((b, "unregistered"))
        else:
            for c in contacts:
                try:
                    uri = c.uri
                except SipParseError as e:
                    return 400, f"Bad Contact: {e.reason}", []
                exp_param = c.params.get("expires")
                if exp_param is not None:
                    if not exp_param.isdigit():
                        return 400, "Bad Contact expires", []
                    exp = int(exp_param)
                elif header_expires is not None:
                    exp = header_expires
                else:
                    exp = self.default_expires
                if 0 < exp < self.min_expires:
                    return 423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))]
                exp = min(exp, self.max_expires)
                key, instance = _binding_key(uri.raw, c.params)
                old = current.get(key)
                if old is not None and old.call_id == call_id and cseq <= old.cseq:
                    return 500, "Stale CSeq", []
                if exp == 0:
                    if old is not None:
                        old.call_id, old.cseq = call_id, cseq  # the REGISTER that removed it
                        self._drop(aor, old)
                        changes.append((old, "unregistered"))
                    continue
                if old is None:
                    self._counter += 1
                    b = Binding(aor, uri.raw, c.raw, call_id, cseq, now + exp, c.params.get("q"), now,
                                f"c{self._counter}", key=key, instance=instance)
                    current[key] = b
                    event = "registered"
                else:
                    b = old
                    # RFC 3680 §5.1: "shortened" is the registrar's own policy; a
                    # client asking for less time refreshes its contact all the same
                    event = "refreshed"
                    b.call_id, b.cseq, b.expires_at, b.raw = call_id, cseq, now + exp, c.raw
                    b.contact = uri.raw  # the instance's current address
                b.event = event
                self._arm(b)
                changes.append((b, event))
        if not current:
            self.bindings.pop(aor, None)
        headers = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}"
                        + (f";{b.instance}" if b.instance else ""))
            for b in self.bindings.get(aor, {}).values()
        ]
        if changes:
            # Reported after the 200 is out (see flush_changes).
            self._pending.append((aor, changes))
        return 200, "OK", headers

    def flush_changes(self, now: float) -> None:
        pending, self._pending = self._pending, []
        if self.on_change is not None:
            for aor, changes in pending:
                self.on_change(aor, now, changes)

    def _arm(self, b: Binding) -> None:
        if b.timer is not None:
            b.timer.cancel()  # type: ignore[attr-defined]
        b.timer = self.timers.schedule(b.expires_at, self._expired, b)

    def _expired(self, now: float, b: Binding) -> None:
        cur = self.bindings.get(b.aor, {})
        if cur.get(b.key) is b:
            self._drop(b.aor, b)
            if self.on_change is not None:
                self.on_change(b.aor, now, [(b, "expired")])

    def _drop(self, aor: str, b: Binding) -> None:
        cur = self.bindings.get(aor)
        if cur is not None:
            cur.pop(b.key, None)
            if not cur:
                self.bindings.pop(aor, None)
        if b.timer is not None:
            b.timer.cancel()  # type: ignore[attr-defined]
            b.timer = None

    def lookup(self, aor: str) -> list[Binding]:
        return list(self.bindings.get(aor, {}).values())
