"""Value types of the pres-rules evaluator (RFC 4745 + RFC 5025).

Everything is an immutable, hashable value so decisions can be cached and
compared. Permissions combine as RFC 4745 §10.2 prescribes: ordered values
take the maximum, booleans OR, sets union — `Transformations.__or__` is that
combination, and it is associative, commutative and idempotent, so the
result never depends on rule order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from presenced.events.formats.xml import BodyError

__all__ = [
    "ALL",
    "ATTRIBUTE_NAMES",
    "NONE",
    "NS_CP",
    "NS_PR",
    "SUB_HANDLING",
    "USER_INPUT_LEVELS",
    "ComponentGrant",
    "Decision",
    "RulesError",
    "Selector",
    "Transformations",
]

NS_CP = "urn:ietf:params:xml:ns:common-policy"
NS_PR = "urn:ietf:params:xml:ns:pres-rules"

#: RFC 5025 §3.2.1 sub-handling values and their order (higher = more permissive).
SUB_HANDLING: dict[str, int] = {"block": 0, "confirm": 10, "polite-block": 20, "allow": 30}
_SUB_HANDLING_BY_VALUE = {v: k for k, v in SUB_HANDLING.items()}

#: RFC 5025 provide-user-input levels, least to most revealing.
USER_INPUT_LEVELS: tuple[str, ...] = ("false", "bare", "thresholds", "full")

#: Boolean attribute permissions of RFC 5025 §3.3.2 (`provide-<name>`).
#: provide-user-input (levelled), provide-unknown-attribute (per element) and
#: provide-all-attributes have their own fields.
ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    {
        "activities",
        "class",
        "deviceID",
        "mood",
        "place-is",
        "place-type",
        "privacy",
        "relationship",
        "status-icon",
        "sphere",
        "time-offset",
        "note",
    }
)

#: Selector kinds per component permission (RFC 5025 §3.3.1).
SERVICE_SELECTORS = frozenset({"service-uri", "service-uri-scheme", "occurrence-id", "class"})
PERSON_SELECTORS = frozenset({"occurrence-id", "class"})
DEVICE_SELECTORS = frozenset({"deviceID", "occurrence-id", "class"})


class RulesError(BodyError):
    """A pres-rules document that cannot be used; `reason` is one printable line.

    A ValueError (through BodyError), so an XCAP handler can answer 409 with
    the reason and everything else can treat it as "no usable rules".
    """


@dataclass(frozen=True, order=True)
class Selector:
    """One `<service-uri>`, `<service-uri-scheme>`, `<occurrence-id>`,
    `<class>` or `<deviceID>` child of a provide-services/persons/devices."""

    kind: str
    value: str


@dataclass(frozen=True)
class ComponentGrant:
    """A component permission: all components, none, or those a selector picks.

    `all=True` always has empty `selectors` (normalised), so equal grants
    compare equal.
    """

    all: bool = False
    selectors: frozenset[Selector] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.all and self.selectors:
            object.__setattr__(self, "selectors", frozenset())

    @property
    def none(self) -> bool:
        return not self.all and not self.selectors

    def __or__(self, other: ComponentGrant) -> ComponentGrant:
        if not isinstance(other, ComponentGrant):
            return NotImplemented
        if self.all or other.none:
            return self
        if other.all or self.none:
            return other
        return ComponentGrant(False, self.selectors | other.selectors)

    def covers(self, other: ComponentGrant) -> bool:
        """True if every component `other` grants is granted here too (by
        construction, not by looking at a document)."""
        return self.all or (not other.all and other.selectors <= self.selectors)


ALL = ComponentGrant(all=True)
NONE = ComponentGrant()


@dataclass(frozen=True)
class Transformations:
    """Combined RFC 5025 §3.3 permissions. The defaults grant nothing: a
    watcher whose matching rules carry no transformations gets a document
    with no services, persons, devices or attributes."""

    provide_services: ComponentGrant = NONE
    provide_persons: ComponentGrant = NONE
    provide_devices: ComponentGrant = NONE
    provide_all_attributes: bool = False
    attributes: frozenset[str] = frozenset()
    provide_user_input: str = "false"
    #: (namespace, local name) pairs granted by provide-unknown-attribute.
    provide_unknown_attributes: frozenset[tuple[str, str]] = frozenset()

    def __post_init__(self) -> None:
        if self.provide_user_input not in USER_INPUT_LEVELS:
            raise ValueError(f"provide_user_input must be one of {USER_INPUT_LEVELS}")
        unknown = set(self.attributes) - ATTRIBUTE_NAMES
        if unknown:
            raise ValueError(f"unknown attribute permissions: {sorted(unknown)}")

    @classmethod
    def full(cls) -> Transformations:
        """Everything provided (e.g. for watchers admitted by an operator
        default when the presentity has no rules document)."""
        return cls(ALL, ALL, ALL, True, ATTRIBUTE_NAMES, "full", frozenset())

    @property
    def user_input_level(self) -> int:
        """Effective provide-user-input level (0..3); all-attributes means full."""
        if self.provide_all_attributes:
            return len(USER_INPUT_LEVELS) - 1
        return USER_INPUT_LEVELS.index(self.provide_user_input)

    def grants_attribute(self, name: str) -> bool:
        return self.provide_all_attributes or name in self.attributes

    def __or__(self, other: Transformations) -> Transformations:
        if not isinstance(other, Transformations):
            return NotImplemented
        level = max(USER_INPUT_LEVELS.index(self.provide_user_input), USER_INPUT_LEVELS.index(other.provide_user_input))
        return Transformations(
            self.provide_services | other.provide_services,
            self.provide_persons | other.provide_persons,
            self.provide_devices | other.provide_devices,
            self.provide_all_attributes or other.provide_all_attributes,
            self.attributes | other.attributes,
            USER_INPUT_LEVELS[level],
            self.provide_unknown_attributes | other.provide_unknown_attributes,
        )

    def covers(self, other: Transformations) -> bool:
        """True if this grants at least everything `other` grants."""
        if not (
            self.provide_services.covers(other.provide_services)
            and self.provide_persons.covers(other.provide_persons)
            and self.provide_devices.covers(other.provide_devices)
        ):
            return False
        if self.provide_all_attributes:
            return True
        return (
            not other.provide_all_attributes
            and other.attributes <= self.attributes
            and other.user_input_level <= self.user_input_level
            and other.provide_unknown_attributes <= self.provide_unknown_attributes
        )


@dataclass(frozen=True)
class Decision:
    """Outcome of evaluating a ruleset for one watcher.

    `sub_handling` is 'block', 'confirm', 'polite-block' or 'allow';
    `matched_rules` are the ids of every matching rule in document order.
    The transformations are the combined grants of the matching rules
    whatever the sub-handling; they only matter for watchers that are
    sent real state ('allow'): callers must never send a blocked or
    polite-blocked watcher the filtered document.
    """

    sub_handling: str
    transformations: Transformations
    matched_rules: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.sub_handling not in SUB_HANDLING:
            raise ValueError(f"sub_handling must be one of {tuple(SUB_HANDLING)}")

    @property
    def sub_handling_value(self) -> int:
        return SUB_HANDLING[self.sub_handling]


def sub_handling_name(value: int) -> str:
    return _SUB_HANDLING_BY_VALUE[value]
