"""What to do for a presentity that has no pres-rules document at all.

This is an operator setting, not policy evaluation: RFC 5025 says nothing
about users who never wrote rules. Modes:

* ``pending`` — Kamailio's behaviour: the watcher waits (status pending,
  the presentity is told through presence.winfo and may decide later);
* ``allow`` — everyone who subscribes is active (open presence);
* ``same-domain`` — authenticated watchers whose identity is in the
  presentity's domain are active, everyone else is pending (typical for a
  company server: colleagues see each other, outsiders need approval);
* ``block`` — nobody gets presence: terminated with reason ``rejected``.

Watchers admitted by a default see the full document (use
``Transformations.full()``): there are no rules to filter with.
"""

from __future__ import annotations

from .identity import identity_key

__all__ = ["DEFAULT_MODES", "default_decision", "validate_default_mode"]

DEFAULT_MODES: tuple[str, ...] = ("pending", "allow", "same-domain", "block")

_PENDING = ("pending", None)
_ACTIVE = ("active", None)
_REJECTED = ("terminated", "rejected")


def validate_default_mode(mode: str) -> str:
    """Return `mode` if it is a known default mode, else raise ValueError."""
    if mode not in DEFAULT_MODES:
        raise ValueError(f"unknown default authorization mode {mode!r} (one of {', '.join(DEFAULT_MODES)})")
    return mode


def default_decision(
    watcher_uri: str,
    presentity_uri: str,
    mode: str,
    *,
    authenticated: bool = True,
) -> tuple[str, str | None]:
    """(status, reason) for a watcher of a presentity without rules.

    Same status vocabulary as `decision_to_status`. In ``same-domain`` mode
    an unauthenticated watcher, or one whose URI has no comparable domain
    (tel:, unparsable), stays pending; domains compare case-insensitively
    and exactly (no subdomains).
    """
    validate_default_mode(mode)
    if mode == "pending":
        return _PENDING
    if mode == "allow":
        return _ACTIVE
    if mode == "block":
        return _REJECTED
    if not authenticated:
        return _PENDING
    watcher = identity_key(watcher_uri)
    owner = identity_key(presentity_uri)
    if watcher is None or owner is None or watcher.domain is None or owner.domain is None:
        return _PENDING
    return _ACTIVE if watcher.domain == owner.domain else _PENDING
