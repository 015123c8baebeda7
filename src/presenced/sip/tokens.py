"""Unguessable tokens (tags, branches, entity-tags) from a pooled CSPRNG.

`secrets.token_*` costs a getrandom() system call and a few Python calls per
token; the hot path makes two or three tokens per request. Here one
os.urandom() read makes the next 256 tokens of a size at once. Same
generator, same unpredictability.
"""

from __future__ import annotations

import os
from binascii import b2a_base64

_BATCH = 256
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_hex: dict[int, list[str]] = {}
#: Set once by a worker process when several run (runtime/workers.py): put in
#: front of the random part of every Via branch this process makes, so the
#: response to a NOTIFY finds the worker holding its client transaction.
#: "" (one process) = branches exactly as before.
BRANCH_MARK = ""
_b64: dict[int, list[str]] = {}


def _reset() -> None:
    # A forked child must never hand out tokens the parent also holds.
    _hex.clear()
    _b64.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)


def token_hex(n: int) -> str:
    """2n hex digits from n random bytes (as secrets.token_hex)."""
    pool = _hex.get(n)
    if pool:
        return pool.pop()
    w = 2 * n
    s = os.urandom(n * _BATCH).hex()
    pool = _hex[n] = [s[i : i + w] for i in range(0, len(s), w)]
    return pool.pop()


def token_urlsafe(n: int) -> str:
    """URL-safe base64 of n random bytes, unpadded (as secrets.token_urlsafe)."""
    pool = _b64.get(n)
    if pool:
        return pool.pop()
    if n % 3:
        # Unaligned sizes would straddle base64 groups: encode one at a time.
        return b2a_base64(os.urandom(n), newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")
    w = n // 3 * 4
    s = b2a_base64(os.urandom(n * _BATCH), newline=False).translate(_URLSAFE).decode("ascii")
    pool = _b64[n] = [s[i : i + w] for i in range(0, len(s), w)]
    return pool.pop()
