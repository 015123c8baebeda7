"""The event-package plug-in interface (what Kamailio's `add_event` carries).

The core knows nothing about PIDF or dialog-info: it asks the package to
validate a PUBLISH body, to compose the live publications of a presentity
into one NOTIFY body, and (optionally) to filter that body per watcher.
A composed body is computed once per state change and shared by every
watcher; per-subscription `version` attributes are filled in by
`VersionedBody.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from presenced.events.formats.xml import BodyError, VersionedBody

if TYPE_CHECKING:  # pragma: no cover
    from presenced.core.state import Publication, Subscription

__all__ = ["BodyError", "EventPackage", "VersionedBody", "PublicationView"]


@dataclass(slots=True)
class PublicationView:
    """What a package sees of one publication when composing."""

    etag: str
    body: bytes
    content_type: str
    received: float


class EventPackage:
    """Base class; subclasses set the class attributes and override hooks.

    name              full name as it appears in Event (`presence`, `dialog;sla`
                      is name `dialog` with required_params {'sla'})
    required_params   Event parameters that select this package variant
    content_types     MIME types accepted in PUBLISH (empty: PUBLISH refused)
    notify_type       MIME type of NOTIFY bodies
    default_expires   subscription duration when SUBSCRIBE has no Expires
    publishable       state comes from PUBLISH
    winfo             the package has a paired `<name>.winfo` package
    requires_auth     watchers go through authorization (pending/active)
    versioned         bodies carry a per-subscription version counter
    """

    name: str = ""
    required_params: frozenset[str] = frozenset()
    content_types: tuple[str, ...] = ()
    notify_type: str = ""
    default_expires: int = 3600
    publishable: bool = True
    winfo: bool = False
    requires_auth: bool = False
    versioned: bool = False
    template: str | None = None  # e.g. 'winfo' for presence.winfo
    keeps_history: bool = False  # carry_over is called when a PUBLISH modifies a publication
    # Event parameters of a SUBSCRIBE kept with the subscription (in
    # `extra["filter"]`) for filter_for, e.g. RFC 4235's call-id.
    filter_params: frozenset[str] = frozenset()

    def __init__(self, **options: Any) -> None:
        self.options = options

    @property
    def key(self) -> str:
        """Registry key: `dialog;sla`, `presence.winfo` (memoised: read per request)."""
        cached = self.__dict__.get("_key")
        if cached is not None and cached[0] == (self.name, self.template, self.required_params):
            return cached[1]
        name = self.name if self.template is None else f"{self.name}.{self.template}"
        key = name + "".join(";" + p for p in sorted(self.required_params))
        self.__dict__["_key"] = ((self.name, self.template, self.required_params), key)
        return key

    def validate(self, body: bytes, content_type: str) -> None:
        """Raise BodyError with a reason when the PUBLISH body is unusable."""

    def carry_over(self, old: bytes, new: bytes) -> bytes:
        """The body a modifying PUBLISH leaves (with `keeps_history`): what of
        the replaced body must survive, e.g. a dialog's final state."""
        return new

    def compose(self, entity: str, publications: Sequence[PublicationView]) -> VersionedBody | None:
        """One body for all live publications (newest first). None: no state."""
        if not publications:
            return None
        return VersionedBody.fixed(publications[0].body)

    def empty_body(self, entity: str) -> VersionedBody | None:
        """What an active watcher gets when nothing is published (None: no body)."""
        return None

    def blocked_body(self, entity: str) -> bytes:
        """What a politely blocked watcher (RFC 5025 §3.2.1: active, told
        nothing true) is sent instead of the state; b"": no body."""
        return b""

    def filter_for(self, body: bytes, subscription: "Subscription") -> bytes:
        """Per-watcher body transformation (authorization rules); identity by default."""
        return body

    def accepts(self, accept: Sequence[str] | None) -> bool:
        """RFC 6665 §4.2.1.1 / 406: is notify_type acceptable to this watcher?
        None: no Accept header (the package's type); empty: nothing is."""
        if accept is None:
            return True
        t = self.notify_type
        major = t.partition("/")[0] + "/*"
        for a in accept:
            if a == t or a == major or a == "*/*":
                return True
        return False
