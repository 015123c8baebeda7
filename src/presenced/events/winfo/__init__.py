"""`presence.winfo` (RFC 3857/3858): who is watching a presentity.

Its state is not published: the core builds the watcher list from the
subscriptions of the paired package and this package renders it.
"""

from __future__ import annotations

from presenced.events.base import EventPackage
from presenced.events.formats.watcherinfo import WatcherEntry, render_watcherinfo

WINFO = "application/watcherinfo+xml"


class WinfoPackage(EventPackage):
    name = "presence"
    template = "winfo"
    content_types = ()
    notify_type = WINFO
    publishable = False
    requires_auth = False
    versioned = True

    def __init__(self, watched: str = "presence", **options) -> None:
        super().__init__(**options)
        self.name = watched

    def render(self, version: int, state: str, resource: str, entries: list[WatcherEntry]) -> bytes:
        return render_watcherinfo(version, state, resource, self.name, entries)
