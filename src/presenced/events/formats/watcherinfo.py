"""watcherinfo (RFC 3858) documents for `*.winfo` subscriptions (RFC 3857).

Built as a string: a full-state document for a popular presentity can list
hundreds of watchers and is rebuilt on every watcher change, and every value
goes through the escaping helpers, so correctness does not depend on lxml.
"""

from __future__ import annotations

from dataclasses import dataclass

from .xml import XML_DECL, escape_attr, escape_text

__all__ = ["NS_WATCHERINFO", "WATCHER_EVENTS", "WATCHER_STATUSES", "WatcherEntry", "render_watcherinfo"]

NS_WATCHERINFO = "urn:ietf:params:xml:ns:watcherinfo"

WATCHER_STATUSES = frozenset({"pending", "active", "waiting", "terminated"})
WATCHER_EVENTS = frozenset(
    {"subscribe", "approved", "deactivated", "probation", "rejected", "timeout", "giveup", "noresource"}
)


@dataclass(slots=True)
class WatcherEntry:
    id: str
    uri: str
    status: str
    event: str
    display_name: str | None = None
    expiration: int | None = None
    duration_subscribed: int | None = None


def _uint(name: str, value: int | None) -> str:
    if value is None:
        return ""
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return f' {name}="{value}"'


def render_watcherinfo(
    version: int, state: str, resource: str, package: str, watchers: list[WatcherEntry]
) -> bytes:
    """One watcher-list for `resource`/`package`, schema-valid per RFC 3858 §5.

    Enumerated values (state, status, event) are checked and raise
    ValueError: they come from our own state machine, and a bad value would
    make every winfo subscriber reject the document. Free text (URIs, ids,
    display names) may be anything; characters XML cannot carry become U+FFFD.
    """
    if state not in ("full", "partial"):
        raise ValueError(f"invalid watcherinfo state {state!r}")
    version = int(version)
    if version < 0:
        raise ValueError("version must be >= 0")
    parts = [
        f'<watcherinfo xmlns="{NS_WATCHERINFO}" version="{version}" state="{state}">\n'
        f'  <watcher-list resource="{escape_attr(resource)}" package="{escape_attr(package)}"'
    ]
    if not watchers:
        parts.append("/>\n")
    else:
        parts.append(">\n")
        for w in watchers:
            if w.status not in WATCHER_STATUSES:
                raise ValueError(f"invalid watcher status {w.status!r}")
            if w.event not in WATCHER_EVENTS:
                raise ValueError(f"invalid watcher event {w.event!r}")
            parts.append(f'    <watcher id="{escape_attr(w.id)}" status="{w.status}" event="{w.event}"')
            if w.display_name is not None:
                parts.append(f' display-name="{escape_attr(w.display_name)}"')
            parts.append(_uint("expiration", w.expiration))
            parts.append(_uint("duration-subscribed", w.duration_subscribed))
            parts.append(f">{escape_text(w.uri)}</watcher>\n")
        parts.append("  </watcher-list>\n")
    parts.append("</watcherinfo>\n")
    return XML_DECL + "".join(parts).encode("utf-8")
