"""Unguessable tokens (tags, branches, entity-tags) from a pooled CSPRNG.

`secrets.token_*` costs a getrandom() system call per token; the hot path
makes two or three tokens per request, so the bytes come from one
os.urandom() read per 4 KiB instead. Same generator, same unpredictability.
"""

from __future__ import annotations

import os
from base64 import urlsafe_b64encode

_POOL = 4096
_buf = b""
_pos = 0


def _reset() -> None:
    # A forked child must never hand out the parent's remaining bytes.
    global _buf, _pos
    _buf, _pos = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)


def random_bytes(n: int) -> bytes:
    global _buf, _pos
    start = _pos
    end = start + n
    if end > len(_buf):
        _buf = os.urandom(max(_POOL, n))
        start, end = 0, n
    _pos = end
    return _buf[start:end]


def token_hex(n: int) -> str:
    return random_bytes(n).hex()


def token_urlsafe(n: int) -> str:
    return urlsafe_b64encode(random_bytes(n)).rstrip(b"=").decode("ascii")
