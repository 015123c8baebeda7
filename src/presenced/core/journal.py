"""What changed since the last flush to storage.

The engine records changes here instead of talking to a database (it is
sans-I/O); the runtime turns a journal into one storage transaction. Entries
are keyed, so ten NOTIFYs on one dialog between two flushes cost one row
write (this is what makes write-back cheap).
"""

from __future__ import annotations

from presenced.core.state import Publication, Subscription


#: NOTIFYs a dialog may send past its stored CSeq before the journal asks
#: for an early write. A restart after a crash in write-back mode skips
#: CSEQ_SKIP_AFTER_CRASH (runtime/persistence.py), so NOTIFYs never reuse a
#: CSeq or body version as long as the early write lands within the next
#: (CSEQ_SKIP_AFTER_CRASH - HURRY_AFTER) NOTIFYs of that dialog.
HURRY_AFTER = 50


class Journal:
    __slots__ = ("pubs", "pub_deletes", "subs", "auth", "first_cseq", "hurry")

    def __init__(self) -> None:
        self.pubs: dict[str, Publication] = {}                      # etag -> live publication
        self.pub_deletes: dict[str, tuple[str, str]] = {}           # etag -> (pres_uri, event)
        self.subs: dict[tuple, tuple[Subscription, bool]] = {}      # dialog key -> (sub, alive)
        self.auth: dict[tuple[str, str, str], tuple[str, str | None] | None] = {}
        # dialog key -> its CSeq when it first changed since the last write
        self.first_cseq: dict[tuple, int] = {}
        # some dialog sent HURRY_AFTER NOTIFYs unwritten: write-back should write now
        self.hurry = False

    def __bool__(self) -> bool:
        return bool(self.pubs or self.pub_deletes or self.subs or self.auth)

    def pub_saved(self, pub: Publication) -> None:
        self.pubs[pub.etag] = pub
        self.pub_deletes.pop(pub.etag, None)

    def pub_deleted(self, etag: str, pres_uri: str, event: str) -> None:
        self.pubs.pop(etag, None)
        self.pub_deletes[etag] = (pres_uri, event)

    def sub_saved(self, sub: Subscription) -> None:
        key = sub.key
        if key not in self.subs:
            self.first_cseq[key] = sub.local_cseq
        self.subs[key] = (sub, True)

    def sub_notified(self, sub: Subscription) -> None:
        """A NOTIFY took the dialog's next CSeq."""
        self.sub_saved(sub)
        if sub.local_cseq - self.first_cseq.setdefault(sub.key, sub.local_cseq) >= HURRY_AFTER:
            self.hurry = True

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
        out.first_cseq, self.first_cseq = self.first_cseq, {}
        self.hurry = False
        return out

    def take_publications(self) -> "Journal":
        """Hand over only the publication changes (a write-through commit of a
        PUBLISH in write-back subscription mode: the NOTIFYs' CSeq and version
        updates wait for the periodic flush instead of riding on every PUBLISH)."""
        out = Journal()
        out.pubs, self.pubs = self.pubs, {}
        out.pub_deletes, self.pub_deletes = self.pub_deletes, {}
        return out
