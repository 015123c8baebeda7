"""What changed since the last flush to storage.

The engine records changes here instead of talking to a database (it is
sans-I/O); the runtime turns a journal into one storage transaction. Entries
are keyed, so ten NOTIFYs on one dialog between two flushes cost one row
write (this is what makes write-back cheap).
"""

from __future__ import annotations

from presenced.core.state import Publication, Subscription


class Journal:
    __slots__ = ("pubs", "pub_deletes", "subs", "auth")

    def __init__(self) -> None:
        self.pubs: dict[str, Publication] = {}                      # etag -> live publication
        self.pub_deletes: dict[str, tuple[str, str]] = {}           # etag -> (pres_uri, event)
        self.subs: dict[tuple, tuple[Subscription, bool]] = {}      # dialog key -> (sub, alive)
        self.auth: dict[tuple[str, str, str], tuple[str, str | None] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.pubs or self.pub_deletes or self.subs or self.auth)

    def pub_saved(self, pub: Publication) -> None:
        self.pubs[pub.etag] = pub
        self.pub_deletes.pop(pub.etag, None)

    def pub_deleted(self, etag: str, pres_uri: str, event: str) -> None:
        self.pubs.pop(etag, None)
        self.pub_deletes[etag] = (pres_uri, event)

    def sub_saved(self, sub: Subscription) -> None:
        self.subs[sub.key] = (sub, True)

    def sub_deleted(self, sub: Subscription) -> None:
        self.subs[sub.key] = (sub, False)

    def auth_saved(self, key: tuple[str, str, str], decision: tuple[str, str | None] | None) -> None:
        self.auth[key] = decision

    def take(self) -> "Journal":
        """Hand over the accumulated changes and start a fresh journal."""
        out = Journal()
        out.pubs, self.pubs = self.pubs, {}
        out.pub_deletes, self.pub_deletes = self.pub_deletes, {}
        out.subs, self.subs = self.subs, {}
        out.auth, self.auth = self.auth, {}
        return out

    def take_publications(self) -> "Journal":
        """Hand over only the publication changes (a write-through commit of a
        PUBLISH in write-back subscription mode: the NOTIFYs' CSeq and version
        updates wait for the periodic flush instead of riding on every PUBLISH)."""
        out = Journal()
        out.pubs, self.pubs = self.pubs, {}
        out.pub_deletes, self.pub_deletes = self.pub_deletes, {}
        return out
