"""Watcher authorization: RFC 5025 pres-rules on RFC 4745 common policy.

Pure code (no I/O, no clock): parse a rules document once, evaluate it per
watcher with the time passed in, filter PIDF for the watcher's grants.
"""

from __future__ import annotations

from .defaults import DEFAULT_MODES, default_decision, validate_default_mode
from .identity import Identity, identity_key
from .model import (
    ALL,
    ATTRIBUTE_NAMES,
    NONE,
    NS_CP,
    NS_PR,
    SUB_HANDLING,
    USER_INPUT_LEVELS,
    ComponentGrant,
    Decision,
    RulesError,
    Selector,
    Transformations,
)
from .presrules import Rule, Ruleset, decision_to_status, evaluate, parse_rules
from .transform import apply_transformations, compute_sphere

__all__ = [
    "ALL",
    "ATTRIBUTE_NAMES",
    "DEFAULT_MODES",
    "NONE",
    "NS_CP",
    "NS_PR",
    "SUB_HANDLING",
    "USER_INPUT_LEVELS",
    "ComponentGrant",
    "Decision",
    "Identity",
    "Rule",
    "RulesError",
    "Ruleset",
    "Selector",
    "Transformations",
    "apply_transformations",
    "compute_sphere",
    "decision_to_status",
    "default_decision",
    "evaluate",
    "identity_key",
    "parse_rules",
    "validate_default_mode",
]
