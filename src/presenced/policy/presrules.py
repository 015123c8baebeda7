"""Presence authorization rules (RFC 5025) on the common-policy model (RFC 4745).

Pure: `parse_rules` turns a pres-rules document into an immutable `Ruleset`,
`evaluate` decides for one watcher at a time the caller passes in, nothing
reads a clock, a database or the network.

How this differs from Kamailio's presence_xml (kamailio-presence-spec §12.3):

* **Every matching rule counts** (RFC 4745 §10). Kamailio stops at the first
  matching rule in document order; here sub-handling is the maximum over all
  matching rules (block 0 < confirm 10 < polite-block 20 < allow 30), boolean
  permissions are OR-ed and set permissions united, so rule order never
  matters.
* A rule without `<conditions>` (or with an empty one) matches everyone,
  including unauthenticated watchers; Kamailio aborts evaluation instead.
  A rule without `<identity>` likewise applies to anyone.
* `<one id>` compares identities (see `identity.py`: scheme family, case-
  insensitive host, case-sensitive user, parameters ignored), not strings.
  `<many domain>` compares the watcher identity's domain, not the From domain.
* Sphere: when the presentity has no (or an inconsistent) sphere, a
  `<sphere>` condition is FALSE (RFC 5025 §3.1.2: the value is undefined).
  Kamailio treats "no sphere published" as TRUE.
* An unsupported condition makes its rule never match (RFC 4745 §7: a child
  of `<conditions>` in an unknown namespace evaluates to FALSE); Kamailio
  ignores unknown conditions.
* Transformations are positive grants (RFC 5025 §3.3): an allowed watcher
  whose rules grant nothing gets a PIDF with no tuples; Kamailio passes the
  whole document when a rule has no `<transformations>`.

Choices where the RFCs leave room (documented here, tested in tests/policy):

* Authentication (RFC 4745 §7.1): identity conditions only ever match an
  authenticated identity, so with `authenticated=False` every `<identity>`
  condition — `<one>` and `<many>` alike, with or without a domain — is
  FALSE. Only rules without an `<identity>` condition can match an anonymous
  watcher. An authenticated watcher whose URI cannot be parsed is treated the
  same way (fail closed), so it cannot dodge an `<except>`.
* `<validity>`: each `<from>`/`<until>` pair is the half-open interval
  [from, until); the condition holds if `now_unix` lies in any pair. A pair
  with until <= from is accepted and never matches. dateTimes must carry a
  timezone (RFC 4745 erratum 1455).
* `<sphere value>` is a whitespace-separated list; tokens are compared
  case-insensitively with the presentity's sphere.
* `<many domain>` matches the exact domain (no subdomains), compared
  case-insensitively after IDNA encoding; `<except domain>` and
  `<except id>` are honoured inside `<many>` with or without a domain. A
  watcher without a domain (tel:, mailto:) never matches `<many domain>`.
* Matched rules but none with `<sub-handling>` → 'block' (the RFC 5025
  §3.2.1 value for "undefined"); no rule matched → `evaluate` returns None
  and the caller applies its default (Kamailio: pending, i.e. 'confirm').
* Several `<sub-handling>` in one rule combine like several rules (maximum);
  several provide-* of the same kind in one rule are united.
* Unknown actions and transformations (any namespace) grant nothing and are
  ignored; unknown elements in the common-policy namespace directly under
  `<ruleset>` or `<rule>` are errors.

`parse_rules` raises RulesError (a ValueError with a one-line `reason`) for
documents that cannot be trusted: not XML, DOCTYPE/entities, too large or
deep (the hardened `parse_xml`), wrong root or namespace, rules without or
with duplicate `id`, repeated rule parts (order is free), `<one>` without a URI
`id`, `<sphere>` without a value, `<validity>` without proper
`<from>`/`<until>` pairs or with bad dates, an unknown `<sub-handling>`
value, a boolean permission that is not an xs:boolean, an unknown
provide-user-input level, provide-unknown-attribute without `ns`/`name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from presenced.events.formats.xml import BodyError, parse_xml

from .identity import Identity, identity_key, normalize_domain
from .model import (
    ALL,
    ATTRIBUTE_NAMES,
    DEVICE_SELECTORS,
    NONE,
    NS_CP,
    NS_PR,
    PERSON_SELECTORS,
    SERVICE_SELECTORS,
    SUB_HANDLING,
    USER_INPUT_LEVELS,
    ComponentGrant,
    Decision,
    RulesError,
    Selector,
    Transformations,
    sub_handling_name,
)
from .transform import apply_transformations, compute_sphere
from .xsdtime import parse_xs_datetime

__all__ = [
    "ALL",
    "NONE",
    "NS_CP",
    "NS_PR",
    "ComponentGrant",
    "Decision",
    "IdentityCondition",
    "ManyCondition",
    "Rule",
    "RulesError",
    "Ruleset",
    "Selector",
    "SphereCondition",
    "Transformations",
    "UnknownCondition",
    "ValidityCondition",
    "apply_transformations",
    "compute_sphere",
    "decision_to_status",
    "evaluate",
    "parse_rules",
]


def _cp(local: str) -> str:
    return f"{{{NS_CP}}}{local}"


def _pr(local: str) -> str:
    return f"{{{NS_PR}}}{local}"


_RULESET = _cp("ruleset")
_RULE = _cp("rule")
_CONDITIONS = _cp("conditions")
_ACTIONS = _cp("actions")
_TRANSFORMATIONS = _cp("transformations")
_IDENTITY = _cp("identity")
_ONE = _cp("one")
_MANY = _cp("many")
_EXCEPT = _cp("except")
_SPHERE = _cp("sphere")
_VALIDITY = _cp("validity")
_FROM = _cp("from")
_UNTIL = _cp("until")
_SUB_HANDLING = _pr("sub-handling")

_RULE_PARTS = (_CONDITIONS, _ACTIONS, _TRANSFORMATIONS)

_XS_TRUE = frozenset({"true", "1"})
_XS_FALSE = frozenset({"false", "0"})


# --------------------------------------------------------------------------
# Parsed model


@dataclass(frozen=True)
class _Context:
    identity: Identity | None  # None: anonymous or unusable → no identity match
    sphere: str | None  # case-folded
    now: float


@dataclass(frozen=True)
class ManyCondition:
    """`<many [domain]>` with its `<except>` children."""

    domain: str | None
    except_ids: frozenset[Identity] = frozenset()
    except_domains: frozenset[str] = frozenset()

    def matches(self, identity: Identity) -> bool:
        if self.domain is not None and identity.domain != self.domain:
            return False
        if identity in self.except_ids:
            return False
        return identity.domain is None or identity.domain not in self.except_domains


@dataclass(frozen=True)
class IdentityCondition:
    """RFC 4745 §7.1: TRUE if any child matches the authenticated identity.

    Children in unknown namespaces evaluate to FALSE and are not kept; an
    `<identity>` left with no usable child never matches.
    """

    ones: frozenset[Identity] = frozenset()
    many: tuple[ManyCondition, ...] = ()

    def holds(self, ctx: _Context) -> bool:
        identity = ctx.identity
        if identity is None:
            return False
        if identity in self.ones:
            return True
        return any(m.matches(identity) for m in self.many)


@dataclass(frozen=True)
class SphereCondition:
    """RFC 4745 §7.3 / RFC 5025 §3.1.2: TRUE iff the presentity's current
    sphere is one of `values` (case-insensitive).

    No sphere (none published, or publications disagree) → FALSE. Kamailio's
    presence_xml treats an absent sphere as TRUE; presenced follows the RFC.
    """

    values: frozenset[str]

    def holds(self, ctx: _Context) -> bool:
        return ctx.sphere is not None and ctx.sphere in self.values


@dataclass(frozen=True)
class ValidityCondition:
    """RFC 4745 §7.4: TRUE iff now lies in one of the [from, until) intervals."""

    intervals: tuple[tuple[float, float], ...]

    def holds(self, ctx: _Context) -> bool:
        now = ctx.now
        return any(start <= now < end for start, end in self.intervals)


@dataclass(frozen=True)
class UnknownCondition:
    """A condition this server does not support: always FALSE (RFC 4745 §7)."""

    tag: str

    def holds(self, ctx: _Context) -> bool:
        return False


Condition = IdentityCondition | SphereCondition | ValidityCondition | UnknownCondition


@dataclass(frozen=True)
class Rule:
    id: str
    conditions: tuple[Condition, ...] = ()
    sub_handling: str | None = None
    transformations: Transformations = field(default_factory=Transformations)

    def matches(self, ctx: _Context) -> bool:
        return all(c.holds(ctx) for c in self.conditions)


@dataclass(frozen=True)
class Ruleset:
    rules: tuple[Rule, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)


# --------------------------------------------------------------------------
# Parsing


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _ns(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def _elements(parent: etree._Element):
    return (c for c in parent if isinstance(c.tag, str))


def _text(element: etree._Element) -> str:
    return (element.text or "").strip()


def _xs_boolean(element: etree._Element, what: str) -> bool:
    value = _text(element)
    if value in _XS_TRUE:
        return True
    if value in _XS_FALSE:
        return False
    raise RulesError(f"{what}: {value[:20]!r} is not a boolean (true/false)")


def _uri_identity(value: str | None, what: str) -> Identity:
    if value is None or not value.strip():
        raise RulesError(f"{what} without an id")
    key = identity_key(value)
    if key is None:
        raise RulesError(f"{what} id is not a URI: {value.strip()[:60]!r}")
    return key


def _parse_identity(element: etree._Element, rule_id: str) -> IdentityCondition:
    ones: set[Identity] = set()
    many: list[ManyCondition] = []
    for child in _elements(element):
        if child.tag == _ONE:
            ones.add(_uri_identity(child.get("id"), f"rule {rule_id!r}: <one>"))
        elif child.tag == _MANY:
            many.append(_parse_many(child, rule_id))
        # anything else is an unsupported identity child: FALSE, i.e. dropped
    return IdentityCondition(frozenset(ones), tuple(many))


def _parse_many(element: etree._Element, rule_id: str) -> ManyCondition:
    domain = element.get("domain")
    if domain is not None:
        domain = normalize_domain(domain)
        if not domain:
            raise RulesError(f"rule {rule_id!r}: <many> with an empty domain")
    except_ids: set[Identity] = set()
    except_domains: set[str] = set()
    for child in _elements(element):
        if child.tag != _EXCEPT:
            continue
        if child.get("id") is not None:
            except_ids.add(_uri_identity(child.get("id"), f"rule {rule_id!r}: <except>"))
        if child.get("domain") is not None:
            value = normalize_domain(child.get("domain"))
            if not value:
                raise RulesError(f"rule {rule_id!r}: <except> with an empty domain")
            except_domains.add(value)
    return ManyCondition(domain, frozenset(except_ids), frozenset(except_domains))


def _parse_sphere(element: etree._Element, rule_id: str) -> SphereCondition:
    value = element.get("value")
    tokens = frozenset(t.casefold() for t in (value or "").split())
    if not tokens:
        raise RulesError(f"rule {rule_id!r}: <sphere> without a value")
    return SphereCondition(tokens)


def _parse_validity(element: etree._Element, rule_id: str) -> ValidityCondition:
    children = list(_elements(element))
    if not children or len(children) % 2:
        raise RulesError(f"rule {rule_id!r}: <validity> needs <from>/<until> pairs")
    intervals = []
    for start_el, end_el in zip(children[::2], children[1::2], strict=True):
        if start_el.tag != _FROM or end_el.tag != _UNTIL:
            raise RulesError(f"rule {rule_id!r}: <validity> needs <from>/<until> pairs")
        try:
            start = parse_xs_datetime(_text(start_el))
            end = parse_xs_datetime(_text(end_el))
        except ValueError as exc:
            raise RulesError(f"rule {rule_id!r}: <validity>: {exc}") from None
        intervals.append((start, end))
    return ValidityCondition(tuple(intervals))


def _parse_conditions(element: etree._Element, rule_id: str) -> tuple[Condition, ...]:
    conditions: list[Condition] = []
    for child in _elements(element):
        tag = child.tag
        if tag == _IDENTITY:
            conditions.append(_parse_identity(child, rule_id))
        elif tag == _SPHERE:
            conditions.append(_parse_sphere(child, rule_id))
        elif tag == _VALIDITY:
            conditions.append(_parse_validity(child, rule_id))
        else:
            conditions.append(UnknownCondition(tag))
    return tuple(conditions)


def _parse_actions(element: etree._Element, rule_id: str) -> str | None:
    best: int | None = None
    for child in _elements(element):
        if child.tag != _SUB_HANDLING:
            continue  # unknown actions are ignored
        value = _text(child)
        if value not in SUB_HANDLING:
            raise RulesError(f"rule {rule_id!r}: unknown sub-handling {value[:30]!r}")
        rank = SUB_HANDLING[value]
        best = rank if best is None else max(best, rank)
    return None if best is None else sub_handling_name(best)


def _normalize_selector(kind: str, value: str) -> str:
    if kind == "service-uri-scheme":
        return value.lower()
    return value


def _parse_component(element: etree._Element, all_name: str, kinds: frozenset[str]) -> ComponentGrant:
    selectors: set[Selector] = set()
    for child in _elements(element):
        if _ns(child.tag) != NS_PR:
            continue
        local = _local(child.tag)
        if local == all_name:
            return ALL
        if local in kinds:
            value = "".join(child.itertext()).strip()
            if value:  # an empty selector selects nothing
                selectors.add(Selector(local, _normalize_selector(local, value)))
    return ComponentGrant(False, frozenset(selectors)) if selectors else NONE


_COMPONENTS = {
    "provide-services": ("all-services", SERVICE_SELECTORS),
    "provide-persons": ("all-persons", PERSON_SELECTORS),
    "provide-devices": ("all-devices", DEVICE_SELECTORS),
}


def _parse_transformations(element: etree._Element, rule_id: str) -> Transformations:
    grants = {"provide-services": NONE, "provide-persons": NONE, "provide-devices": NONE}
    all_attributes = False
    attributes: set[str] = set()
    user_input = 0
    unknown: set[tuple[str, str]] = set()
    for child in _elements(element):
        if _ns(child.tag) != NS_PR:
            continue  # foreign transformations grant nothing
        local = _local(child.tag)
        what = f"rule {rule_id!r}: <{local}>"
        if local in _COMPONENTS:
            all_name, kinds = _COMPONENTS[local]
            grants[local] = grants[local] | _parse_component(child, all_name, kinds)
        elif local == "provide-all-attributes":
            all_attributes = True
        elif local == "provide-user-input":
            value = _text(child)
            if value not in USER_INPUT_LEVELS:
                raise RulesError(f"{what}: unknown level {value[:20]!r}")
            user_input = max(user_input, USER_INPUT_LEVELS.index(value))
        elif local == "provide-unknown-attribute":
            ns, name = child.get("ns"), child.get("name")
            if not ns or not ns.strip() or not name or not name.strip():
                raise RulesError(f"{what} needs ns and name attributes")
            if _xs_boolean(child, what):
                unknown.add((ns.strip(), name.strip()))
        elif local.startswith("provide-") and local[8:] in ATTRIBUTE_NAMES and _xs_boolean(child, what):
            attributes.add(local[8:])
        # any other pres-rules element: not a permission we know, grants nothing
    return Transformations(
        grants["provide-services"],
        grants["provide-persons"],
        grants["provide-devices"],
        all_attributes,
        frozenset(attributes),
        USER_INPUT_LEVELS[user_input],
        frozenset(unknown),
    )


def _parse_rule(element: etree._Element, seen: set[str]) -> Rule:
    rule_id = element.get("id")
    if rule_id is None or not rule_id.strip():
        raise RulesError("rule without an id")
    rule_id = rule_id.strip()
    if rule_id in seen:
        raise RulesError(f"duplicate rule id {rule_id!r}")
    seen.add(rule_id)
    parts: dict[str, etree._Element] = {}
    for child in _elements(element):
        if child.tag in _RULE_PARTS:
            # The schema orders them conditions, actions, transformations;
            # order carries no meaning, so only repetition is an error.
            if child.tag in parts:
                raise RulesError(f"rule {rule_id!r}: more than one <{_local(child.tag)}>")
            parts[child.tag] = child
        elif _ns(child.tag) == NS_CP:
            raise RulesError(f"rule {rule_id!r}: unexpected <{_local(child.tag)}>")
        # elements of other namespaces are extensions we do not use
    conditions = _parse_conditions(parts[_CONDITIONS], rule_id) if _CONDITIONS in parts else ()
    sub_handling = _parse_actions(parts[_ACTIONS], rule_id) if _ACTIONS in parts else None
    transformations = (
        _parse_transformations(parts[_TRANSFORMATIONS], rule_id) if _TRANSFORMATIONS in parts else Transformations()
    )
    return Rule(rule_id, conditions, sub_handling, transformations)


def parse_rules(doc: bytes) -> Ruleset:
    """Parse and validate a pres-rules (`application/auth-policy+xml`) document."""
    try:
        root = parse_xml(doc)
    except BodyError as exc:
        raise RulesError(exc.reason) from None
    if root.tag != _RULESET:
        if _local(root.tag) == "ruleset":
            raise RulesError(f"ruleset element not in namespace {NS_CP}")
        raise RulesError("root element is not a common-policy ruleset")
    seen: set[str] = set()
    rules: list[Rule] = []
    for child in _elements(root):
        if child.tag == _RULE:
            rules.append(_parse_rule(child, seen))
        elif _ns(child.tag) == NS_CP:
            raise RulesError(f"unexpected <{_local(child.tag)}> in ruleset")
    return Ruleset(tuple(rules))


# --------------------------------------------------------------------------
# Evaluation


def evaluate(
    ruleset: Ruleset,
    watcher_uri: str,
    presentity_uri: str,
    *,
    now_unix: float,
    sphere: str | None = None,
    authenticated: bool = True,
) -> Decision | None:
    """Combine every rule that matches this watcher (RFC 4745 §10).

    `watcher_uri` is the watcher's authenticated identity (e.g. the asserted
    or digest-derived AoR, RFC 5025 §3.1.1); `authenticated=False` means
    there is none and no identity condition can match. `sphere` is the
    presentity's current sphere (see `compute_sphere`), None if undefined.
    `presentity_uri` is the owner of the ruleset; common-policy conditions
    do not use it (a ruleset belongs to one presentity), it is accepted so
    callers and future extensions have it. Returns None if no rule matches.
    Never raises for any parsed ruleset and any watcher string.
    """
    del presentity_uri  # see docstring
    identity = identity_key(watcher_uri) if authenticated else None
    sphere_key = None
    if isinstance(sphere, str) and sphere.strip():
        sphere_key = sphere.strip().casefold()
    ctx = _Context(identity, sphere_key, float(now_unix))
    matched: list[Rule] = [rule for rule in ruleset.rules if rule.matches(ctx)]
    if not matched:
        return None
    best: int | None = None
    transformations = Transformations()
    for rule in matched:
        if rule.sub_handling is not None:
            rank = SUB_HANDLING[rule.sub_handling]
            best = rank if best is None else max(best, rank)
        transformations = transformations | rule.transformations
    sub_handling = "block" if best is None else sub_handling_name(best)
    return Decision(sub_handling, transformations, tuple(rule.id for rule in matched))


_STATUS_BY_SUB_HANDLING: dict[str, tuple[str, str | None]] = {
    "allow": ("active", None),
    "confirm": ("pending", None),
    "polite-block": ("active", "polite-block"),
    "block": ("terminated", "rejected"),
}

_DEFAULT_STATUS: dict[str, tuple[str, str | None]] = {
    "active": ("active", None),
    "pending": ("pending", None),
    "terminated": ("terminated", "rejected"),
    **_STATUS_BY_SUB_HANDLING,
}


def decision_to_status(d: Decision | None, *, default: str = "pending") -> tuple[str, str | None]:
    """Kamailio's (watcher status, reason) for a decision.

    allow → ('active', None); confirm → ('pending', None); polite-block →
    ('active', 'polite-block') (subscription looks active, no real state is
    sent); block → ('terminated', 'rejected'). With no decision (no rule
    matched) `default` applies: a status ('pending', 'active', 'terminated')
    or a sub-handling value; 'pending' is Kamailio's behaviour.
    """
    if d is not None:
        return _STATUS_BY_SUB_HANDLING[d.sub_handling]
    try:
        return _DEFAULT_STATUS[default]
    except KeyError:
        raise ValueError(f"unknown default status {default!r}") from None
