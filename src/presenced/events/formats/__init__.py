"""Body formats of the event packages: pure functions, no I/O, no clocks.

Each module validates what publishers send (raising BodyError, whose reason
is fit for a 400 reason phrase) and builds what subscribers receive.
"""

from .dialoginfo import compose_dialoginfo, compose_dialoginfo_sla, validate_dialoginfo
from .pidf import (
    compose_pidf,
    dummy_pidf,
    extract_sphere,
    filter_pidf,
    pres_check_activities,
    pres_check_basic,
    validate_pidf,
)
from .reginfo import ContactEntry, compose_reginfo, render_reginfo, validate_reginfo
from .summary import validate_message_summary
from .watcherinfo import WatcherEntry, render_watcherinfo
from .xml import MAX_BODY_SIZE, MAX_DEPTH, BodyError, VersionedBody, parse_xml

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_DEPTH",
    "BodyError",
    "ContactEntry",
    "VersionedBody",
    "WatcherEntry",
    "compose_dialoginfo",
    "compose_dialoginfo_sla",
    "compose_pidf",
    "compose_reginfo",
    "dummy_pidf",
    "extract_sphere",
    "filter_pidf",
    "parse_xml",
    "pres_check_activities",
    "pres_check_basic",
    "render_reginfo",
    "render_watcherinfo",
    "validate_dialoginfo",
    "validate_message_summary",
    "validate_pidf",
    "validate_reginfo",
]
