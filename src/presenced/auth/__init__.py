"""Digest authentication of SIP requests (RFC 3261 §22, RFC 7616 / RFC 8760), sans-I/O."""

from presenced.auth import digest
from presenced.auth.digest import *  # noqa: F401,F403 - the package re-exports digest's public names

__all__ = list(digest.__all__)
