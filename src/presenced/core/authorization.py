"""Watcher authorization for packages that require it (presence_xml's role).

Rules documents (RFC 5025 pres-rules, stored in Kamailio's `xcap` table) are
kept parsed in memory, keyed by presentity AoR; the runtime loads them at
start and reloads one when an operator changes it (rules put + updateWatchers).
Evaluation is pure: `now` comes from the engine.

- A presentity with a document: RFC 4745 — every matching rule counts; no
  matching rule gives the null permission, i.e. `block` (rejected).
- A presentity without a document: the operator's `no_rules_policy`
  (Kamailio's behaviour, `pending`, by default).
- With `enable_sphere_check`, `<sphere>` conditions see the sphere of the
  current PIDF publications; when a state change moves it, every watcher of
  the presentity is re-authorized (`publication_changed`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from presenced.policy import (
    Decision,
    RulesError,
    Ruleset,
    apply_transformations,
    compute_sphere,
    decision_to_status,
    default_decision,
    evaluate,
    parse_rules,
)

if TYPE_CHECKING:  # pragma: no cover
    from presenced.core.engine import PresenceEngine
    from presenced.core.state import Subscription

log = logging.getLogger("presenced.auth")

PRES_RULES = 2  # Kamailio xcap doc_type bit for pres-rules


class RulesAuthorizer:
    def __init__(self, engine: "PresenceEngine", no_rules_policy: str = "pending", sphere_check: bool = False) -> None:
        self.engine = engine
        self.no_rules_policy = no_rules_policy
        self.sphere_check = sphere_check
        self.rules: dict[str, Ruleset] = {}
        # The raw documents behind `rules`: a re-read of an unchanged row
        # (after a SUBSCRIBE, a DB-only load) is recognised and changes nothing.
        self.docs: dict[str, bytes] = {}
        # The sphere the presentity's watchers were last authorized with.
        self.spheres: dict[str, str | None] = {}

    def set_document(self, presentity: str, doc: bytes | None) -> bool:
        """Install (or with None remove) the pres-rules of a presentity AoR;
        False when that document was already installed."""
        if self.docs.get(presentity) == doc:
            return False
        self.spheres.pop(presentity, None)
        if doc is None:
            self.rules.pop(presentity, None)
            self.docs.pop(presentity, None)
            return True
        self.docs[presentity] = doc
        try:
            self.rules[presentity] = parse_rules(doc)
        except RulesError as e:
            # A broken document must not open the door: treat it as "no match".
            log.warning("pres-rules of %s are invalid (%s); watchers are blocked until fixed", presentity, e)
            self.rules[presentity] = parse_rules(
                b'<ruleset xmlns="urn:ietf:params:xml:ns:common-policy"/>'
            )
        return True

    def clear(self) -> None:
        """Forget every document (before a full reload)."""
        self.rules.clear()
        self.docs.clear()
        self.spheres.clear()

    def __call__(self, pres_uri: str, watcher_uri: str, event: str, sub: "Subscription | None") -> tuple[str, str | None]:
        ruleset = self.rules.get(pres_uri)
        if ruleset is None:
            return default_decision(watcher_uri, pres_uri, self.no_rules_policy)
        now_unix = self.engine.now + self.engine.wall_offset
        sphere = None
        if self.sphere_check:
            sphere = self.current_sphere(pres_uri)
            self.spheres[pres_uri] = sphere
        decision: Decision | None = evaluate(ruleset, watcher_uri, pres_uri, now_unix=now_unix, sphere=sphere)
        if sub is not None:
            if sub.extra is None:
                sub.extra = {}
            sub.extra["transformations"] = decision.transformations if decision is not None else None
        if decision is None:
            return "terminated", "rejected"
        return decision_to_status(decision)

    def current_sphere(self, pres_uri: str) -> str | None:
        return compute_sphere(self.engine.composed_bodies(pres_uri, "presence", self.engine.now))

    def publication_changed(self, pres_uri: str, event: str, now: float) -> None:
        """Engine hook: re-authorize the watchers when the published sphere moved."""
        if not self.sphere_check or event != "presence" or pres_uri not in self.rules:
            return
        if not self.engine.subs_by_presentity.get((pres_uri, "presence")):
            return  # nobody to re-authorize; the next SUBSCRIBE evaluates afresh
        sphere = self.current_sphere(pres_uri)
        if pres_uri in self.spheres and self.spheres[pres_uri] == sphere:
            return
        self.spheres[pres_uri] = sphere
        log.info("sphere of %s is now %s: re-authorizing its watchers", pres_uri, sphere or "undefined")
        self.engine.pres_update_watchers(pres_uri, "presence", now)

    def has_rules(self, pres_uri: str) -> bool:
        return pres_uri in self.rules

    def filter_body(self, body: bytes, sub: "Subscription") -> bytes:
        t: Any = sub.extra.get("transformations") if sub.extra is not None else None
        if t is None or not body:
            return body
        try:
            return apply_transformations(body, t)
        except Exception:  # never leak unfiltered state because of a filter bug
            log.exception("pres-rules transformation failed for %s", sub.watcher_uri)
            return b""
