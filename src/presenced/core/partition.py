"""Which worker process owns a SIP message (several workers, `serve --workers N`).

Every presentity belongs to one worker: ``crc32(lower(presentity key)) & 0xffff``
modulo N (the engine's own key, so equal presentities always agree; zlib's
crc32 is the same in every process, unlike ``hash()``). A worker that reads a
message it does not own hands it to the owner; this module decides, from the
raw bytes, without a full parse:

- a request with a To-tag: the tag presenced made for the dialog carries the
  presentity's 16-bit partition hash (``h1f2e.<64 random bits>``), so the
  owner follows even after a restart with another N;
- a response: the top Via branch of our NOTIFY carries the sending worker's
  index (``z9hG4bKw1.<64 random bits>``), where its client transaction lives;
- PUBLISH, SUBSCRIBE and CANCEL without a To-tag: the Request-URI's
  presentity; REGISTER: the To URI (the AoR whose ``reg`` state it changes);
- anything else, unmarked tags (single-process dialogs) or unparsable input:
  the worker that read it (it answers 400/405/481 as a single process would).

Sans-I/O: bytes in, a worker index out.
"""

from __future__ import annotations

import re
import zlib
from typing import Callable

from presenced.sip.tokens import token_hex

TAG_MARK = "h"     # dialog tag: "h" + 4 hex digits of the partition hash + "."
BRANCH_MARK = "w"  # Via branch: MAGIC + "w" + worker index + "."
_TAG_MARK = TAG_MARK.encode("ascii")
_CACHE_MAX = 65536

# The header block ends at the first empty line; header names are case-insensitive
# and have compact forms (t, v). Only the first match counts (top Via).
_TO = re.compile(rb"\n(?:to|t)[ \t]*:([^\r\n]*)", re.I)
_VIA = re.compile(rb"\n(?:via|v)[ \t]*:([^\r\n]*)", re.I)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.I)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*z9hG4bKw(\d{1,2})\.", re.I)
_BY_URI = (b"PUBLISH", b"SUBSCRIBE", b"CANCEL")


def partition_hash(presentity: str) -> int:
    """16-bit partition hash of an engine presentity key (case folded: keys that
    differ only in case share a worker, whatever `sip_uri_match` says)."""
    return zlib.crc32(presentity.lower().encode("utf-8", "surrogateescape")) & 0xFFFF


def owner_of(presentity: str, workers: int) -> int:
    return partition_hash(presentity) % workers


def branch_mark(index: int) -> str:
    """What this worker puts after the magic cookie of its Via branches."""
    return f"{BRANCH_MARK}{index}."


class Partitioner:
    """Classifies raw messages for worker `index` of `workers`.

    `presentity_key` is the engine's normalisation (`PresenceEngine.presentity_key`):
    URI text → presentity key, raising on URIs the engine refuses.
    """

    def __init__(self, workers: int, index: int, presentity_key: Callable[[str], str]) -> None:
        if not 1 <= workers <= 64 or not 0 <= index < workers:
            raise ValueError(f"worker {index} of {workers}")
        self.workers = workers
        self.index = index
        self.presentity_key = presentity_key
        self._by_uri: dict[bytes, int] = {}

    def dialog_tag(self, presentity: str) -> str:
        """Local tag of a new dialog: the partition hash, then 64 random bits."""
        return f"{TAG_MARK}{partition_hash(presentity):04x}.{token_hex(8)}"

    def owns(self, presentity: str) -> bool:
        return owner_of(presentity, self.workers) == self.index

    def classify(self, data: bytes) -> int:
        """Index of the worker that must process `data` (this one when unsure)."""
        try:
            return self._classify(data)
        except Exception:  # malformed input of any shape: the local worker answers it
            return self.index

    def _classify(self, data: bytes) -> int:
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end + 2]
        sp = head.find(b" ")
        if sp <= 0:
            return self.index
        if head.startswith(b"SIP/2.0 "):
            m = _VIA.search(head)
            if m is None:
                return self.index
            b = _BRANCH.search(m.group(1).split(b",", 1)[0])
            if b is None:
                return self.index
            i = int(b.group(1))
            return i if i < self.workers else self.index
        method = head[:sp]
        m = _TO.search(head)
        if m is None:
            return self.index
        to = m.group(1)
        gt = to.rfind(b">")
        t = _TAG.search(to, gt + 1 if gt >= 0 else 0)
        if t is not None:
            return self.owner_of_tag(t.group(1))
        if method in _BY_URI:
            line_end = head.find(b"\r\n")
            uri = head[sp + 1:head.rfind(b" ", sp + 1, line_end if line_end > 0 else len(head))]
        elif method == b"REGISTER":
            uri = to.strip()
            if gt >= 0:
                lt = uri.find(b"<")
                uri = uri[lt + 1:uri.find(b">", lt)] if lt >= 0 else uri
            else:
                uri = uri.split(b";", 1)[0]
        else:
            return self.index
        return self._owner_of_uri(uri)

    def owner_of_tag(self, tag: bytes) -> int:
        """The owner of a dialog by its local tag; this worker for a tag not made
        by a worker (it answers 481)."""
        if tag[:1] == _TAG_MARK and tag[5:6] == b"." and len(tag) > 6:
            try:
                return int(tag[1:5], 16) % self.workers
            except ValueError:
                return self.index
        return self.index

    def _owner_of_uri(self, uri: bytes) -> int:
        owner = self._by_uri.get(uri)
        if owner is None:
            try:
                key = self.presentity_key(uri.decode("utf-8", "surrogateescape").strip())
            except Exception:
                return self.index  # the engine will answer 400/416 here
            owner = owner_of(key, self.workers)
            if len(self._by_uri) >= _CACHE_MAX:
                self._by_uri.clear()
            self._by_uri[uri] = owner
        return owner
