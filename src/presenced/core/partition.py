"""Which worker process owns a SIP message (several workers, `serve --workers N`).

Every presentity belongs to one worker: ``fnv1a32(user part of the presentity
key, ASCII case folded) & 0xffff`` modulo N (the engine's own key, so equal
presentities always agree; FNV-1a is the same in every process, unlike
``hash()``, and simple enough for the kernel to compute, see below). A worker
that reads a message it does not own hands it to the owner; this module
decides from the parsed message (the runtime parses each datagram once, before
choosing: the top Via, To and Request-URI are what the owner reads next anyway):

- a request with a To-tag: the tag presenced made for the dialog carries the
  presentity's 16-bit partition hash (``h1f2e.<64 random bits>``), so the
  owner follows even after a restart with another N;
- a response: the top Via branch of our NOTIFY carries the sending worker's
  index (``z9hG4bKw1.<64 random bits>``), where its client transaction lives;
- PUBLISH, SUBSCRIBE and CANCEL without a To-tag: the Request-URI's
  presentity; REGISTER: the To URI (the AoR whose ``reg`` state it changes);
- anything else, unmarked tags (single-process dialogs) or unparsable input:
  the worker that read it (it answers 400/405/481 as a single process would).

Kernel steering (`steering_program`): a classic BPF program attached to the
workers' SO_REUSEPORT group of UDP sockets makes the same choice in the kernel
for the common shapes (PUBLISH and SUBSCRIBE by the Request-URI's user part,
which in-dialog requests carry too because a worker's Contact names the
presentity's user; responses by our Via branch), so the datagram lands in the
owner's socket and is not forwarded. It is only a hint: what it cannot decide
goes to the kernel's own hash, and `Partitioner.classify` still checks every
message.

Sans-I/O: a message (or bytes) in, a worker index out.
"""

from __future__ import annotations

from typing import Callable

from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, Response, parse_message
from presenced.sip.tokens import token_hex

TAG_MARK = "h"     # dialog tag: "h" + 4 hex digits of the partition hash + "."
BRANCH_MARK = "w"  # Via branch: MAGIC + "w" + worker index + "."
_CACHE_MAX = 65536

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


FNV_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193


def user_part(presentity: str) -> bytes:
    """What the partition hashes: the key between the scheme and "@" (all of it
    after the scheme when there is no user), ASCII case folded."""
    c = presentity.find(":") + 1
    at = presentity.find("@", c)
    return presentity[c:at if at >= 0 else len(presentity)].encode("utf-8", "surrogateescape").lower()


def partition_hash(presentity: str) -> int:
    """16-bit partition hash of an engine presentity key (case folded: keys that
    differ only in case share a worker, whatever `sip_uri_match` says; so do
    keys with the same user at different hosts)."""
    h = FNV_BASIS
    for b in user_part(presentity):
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h & 0xFFFF


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
        self._by_uri: dict[str, int] = {}

    def dialog_tag(self, presentity: str) -> str:
        """Local tag of a new dialog: the partition hash, then 64 random bits."""
        return f"{TAG_MARK}{partition_hash(presentity):04x}.{token_hex(8)}"

    def owns(self, presentity: str) -> bool:
        return owner_of(presentity, self.workers) == self.index

    def classify(self, data: bytes) -> int:
        """Index of the worker that must process raw `data` (this one when unsure)."""
        try:
            msg = parse_message(data)
        except SipParseError:
            return self.index
        return self.owner_of_message(msg)

    def owner_of_message(self, msg: Request | Response) -> int:
        """Index of the worker that must process a parsed message (this one when
        unsure). The runtime parses each datagram once, before choosing: the
        fields this reads (top Via, To, Request-URI) are the ones the owner
        reads next anyway."""
        try:
            return self._owner_of_message(msg)
        except Exception:  # malformed input of any shape: the local worker answers it
            return self.index

    def _owner_of_message(self, msg: Request | Response) -> int:
        if isinstance(msg, Response):
            # Our branches are "z9hG4bKw<index>.<random>" (branch_mark).
            branch = msg.top_via.branch or ""
            dot = branch.find(".", 8, 11)
            if dot < 0 or branch[:8].lower() != "z9hg4bkw":
                return self.index
            digits = branch[8:dot]
            if not (digits.isascii() and digits.isdigit()):
                return self.index
            i = int(digits)
            return i if i < self.workers else self.index
        to = msg.to
        tag = to.tag
        if tag:
            return self.owner_of_tag(tag)
        method = msg.method
        if method == "PUBLISH" or method == "SUBSCRIBE" or method == "CANCEL":
            return self._owner_of_uri(msg.uri_text)
        if method == "REGISTER":
            return self._owner_of_uri(to.uri_text)
        return self.index

    def owner_of_tag(self, tag: str) -> int:
        """The owner of a dialog by its local tag; this worker for a tag not made
        by a worker (it answers 481)."""
        if tag[:1] == TAG_MARK and tag[5:6] == "." and len(tag) > 6:
            digits = tag[1:5]
            if all(c in _HEX_DIGITS for c in digits):
                return int(digits, 16) % self.workers
        return self.index

    def _owner_of_uri(self, uri: str) -> int:
        owner = self._by_uri.get(uri)
        if owner is None:
            try:
                key = self.presentity_key(uri.strip())
            except Exception:
                return self.index  # the engine will answer 400/416 here
            owner = owner_of(key, self.workers)
            if len(self._by_uri) >= _CACHE_MAX:
                self._by_uri.clear()
            self._by_uri[uri] = owner
        return owner


# ------------------------------------------------------------ kernel steering
# Classic BPF (linux/filter.h): the program runs on each datagram with the UDP
# payload at offset 0 and returns the index of the socket in the reuseport
# group; an index >= the group's size (STEER_NONE) makes the kernel fall back
# to its 4-tuple hash. A load past the end of the datagram ends the program
# with 0 (worker 0 then classifies and forwards).
_LD, _LDX, _ST, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM = 0x00, 0x20, 0x40, 0x60
_ADD, _SUB, _MUL, _OR, _AND, _RSH, _MOD, _XOR = 0x00, 0x10, 0x20, 0x40, 0x50, 0x70, 0x90, 0xA0
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_K, _X, _RA = 0x00, 0x08, 0x10
_TAX = 0x00
STEER_NONE = 0xFFFFFFFF
STEER_USER_MAX = 48      # user parts longer than this are left to the kernel's hash
STEER_BRANCH_FROM = 16   # len("SIP/2.0 200 OK\r\n"): where a top Via can start
STEER_BRANCH_SPAN = 160  # offsets searched for "z9hG4bKw<digit>."
BPF_MAXINSNS = 4096

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _word(s: bytes) -> int:
    return int.from_bytes(s, "big")


def steering_program(workers: int) -> list[Insn]:
    """The classic BPF program that picks the owner's socket (see above); at
    most BPF_MAXINSNS instructions, every jump forward."""
    if not 2 <= workers <= 10:
        raise ValueError("kernel steering needs 2..10 workers (one-digit Via marks)")
    # Assembled with symbolic jump targets; conditional jumps only skip a few
    # instructions (their offsets are 8-bit), far ones go through JA.
    code: list[tuple[int, object, object, int]] = []
    labels: dict[str, int] = {}

    def op(c: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        code.append((c, jt, jf, k))

    def label(name: str) -> None:
        labels[name] = len(code)

    def goto_if(cond: int, k: int, target: str) -> None:
        op(_JMP | cond | _K, k, 0, 1)
        op(_JMP | _JA, 0, target)  # JA's target travels in jt, resolved below

    # --- dispatch on the start line
    op(_LD | _W | _ABS, 0)
    goto_if(_JEQ, _word(b"PUBL"), "publish")
    goto_if(_JEQ, _word(b"SUBS"), "subscribe")
    goto_if(_JEQ, _word(b"SIP/"), "response")
    op(_RET | _K, STEER_NONE)

    label("publish")  # "PUBLISH sip:"
    op(_LD | _W | _ABS, 4)
    goto_if(_JEQ, _word(b"ISH "), "publish_uri")
    op(_RET | _K, STEER_NONE)
    label("publish_uri")
    op(_LD | _IMM, 8)
    op(_JMP | _JA, 0, "uri")

    label("subscribe")  # "SUBSCRIBE sip:"
    op(_LD | _W | _ABS, 4)
    goto_if(_JEQ, _word(b"CRIB"), "subscribe_e")
    op(_RET | _K, STEER_NONE)
    label("subscribe_e")
    op(_LD | _H | _ABS, 8)
    goto_if(_JEQ, _word(b"E "), "subscribe_uri")
    op(_RET | _K, STEER_NONE)
    label("subscribe_uri")
    op(_LD | _IMM, 10)

    # --- A = offset of the Request-URI: "sip:" then FNV-1a over the user part
    label("uri")
    op(_ST, 2)           # M[2] = URI offset
    op(_MISC | _TAX)     # X = URI offset
    op(_LD | _W | _IND, 0)
    goto_if(_JEQ, _word(b"sip:"), "user")
    op(_RET | _K, STEER_NONE)
    label("user")
    op(_LD | _IMM, FNV_BASIS)
    op(_ST, 0)           # M[0] = hash
    for j in range(STEER_USER_MAX):
        op(_LDX | _W | _MEM, 2)                 # X = URI offset
        op(_LD | _B | _IND, 4 + j)              # A = byte j of the user part
        goto_if(_JEQ, ord("@"), "hashed")
        goto_if(_JEQ, ord(" "), "none")        # end of the URI: it has no user part
        goto_if(_JEQ, ord(";"), "none")
        goto_if(_JEQ, ord("?"), "none")
        op(_JMP | _JGT | _K, ord("Z"), 2, 0)    # ASCII case folding
        op(_JMP | _JGE | _K, ord("A"), 0, 1)
        op(_ALU | _OR | _K, 0x20)
        op(_MISC | _TAX)
        op(_LD | _MEM, 0)
        op(_ALU | _XOR | _X)
        op(_ALU | _MUL | _K, FNV_PRIME)
        op(_ST, 0)
    # A user part of exactly STEER_USER_MAX bytes: its "@" is the next byte.
    op(_LDX | _W | _MEM, 2)
    op(_LD | _B | _IND, 4 + STEER_USER_MAX)
    goto_if(_JEQ, ord("@"), "hashed")
    label("none")
    op(_RET | _K, STEER_NONE)
    label("hashed")
    op(_LD | _MEM, 0)
    op(_ALU | _AND | _K, 0xFFFF)
    op(_ALU | _MOD | _K, workers)
    op(_RET | _RA)

    # --- responses: the first "z9hG4bKw<digit>." near the top (our top Via)
    label("response")
    for k in range(STEER_BRANCH_FROM, STEER_BRANCH_FROM + STEER_BRANCH_SPAN):
        op(_LD | _W | _ABS, k)
        op(_JMP | _JEQ | _K, _word(b"z9hG"), 0, 9)   # no: the next offset
        op(_LD | _W | _ABS, k + 4)
        op(_JMP | _JEQ | _K, _word(b"4bKw"), 0, 6)   # another branch: not ours
        op(_LD | _H | _ABS, k + 8)                    # digit, "."
        op(_ALU | _SUB | _K, _word(b"0."))
        op(_JMP | _JSET | _K, 0xFF, 3, 0)             # second byte not "."
        op(_JMP | _JGT | _K, 0x0900, 2, 0)            # first byte not a digit
        op(_ALU | _RSH | _K, 8)
        op(_RET | _RA)
        op(_RET | _K, STEER_NONE)
    op(_RET | _K, STEER_NONE)

    out: list[Insn] = []
    for i, (c, jt, jf, k) in enumerate(code):
        if c == _JMP | _JA and isinstance(jt, str):
            out.append((c, 0, 0, labels[jt] - i - 1))
        else:
            assert isinstance(jt, int) and isinstance(jf, int)
            out.append((c, jt, jf, k))
    if len(out) > BPF_MAXINSNS:
        raise AssertionError(f"steering program too long: {len(out)}")
    return out
