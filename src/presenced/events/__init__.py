"""Event packages as plug-ins: one folder per package, registered in a registry."""

from __future__ import annotations

from presenced.events.base import BodyError, EventPackage, PublicationView, VersionedBody
from presenced.events.registry import EventRegistry

__all__ = ["BodyError", "EventPackage", "EventRegistry", "PublicationView", "VersionedBody", "default_registry"]


def default_registry(cfg=None) -> EventRegistry:
    """The packages Kamailio's presence_xml/_mwi/_dialoginfo/_reginfo register."""
    from presenced.events.dialog import DialogPackage, DialogSlaPackage
    from presenced.events.mwi import MessageSummaryPackage
    from presenced.events.presence import PresencePackage
    from presenced.events.reg import RegPackage
    from presenced.events.winfo import WinfoPackage

    def opt(section: str, name: str, default=0):
        if cfg is None:
            return default
        return getattr(getattr(cfg, section), name, default)

    reg = EventRegistry()
    xml_exp = opt("presence_xml", "default_expires", 3600)
    if not opt("presence_xml", "disable_presence"):
        p = PresencePackage(
            force_dummy_presence=opt("presence_xml", "force_dummy_presence"),
            force_presence_single_body=opt("presence_xml", "force_presence_single_body"),
        )
        p.default_expires = xml_exp
        reg.register(p)
        if not opt("presence_xml", "disable_winfo"):
            w = WinfoPackage("presence")
            w.default_expires = xml_exp
            reg.register(w)
    if not opt("presence_xml", "disable_bla", 1):
        s = DialogSlaPackage()
        s.default_expires = xml_exp
        reg.register(s)
    d = DialogPackage(
        force_single_dialog=opt("presence_dialoginfo", "force_single_dialog"),
        force_dummy_dialog=opt("presence_dialoginfo", "force_dummy_dialog"),
    )
    d.default_expires = opt("presence_dialoginfo", "default_expires", 3600)
    reg.register(d)
    m = MessageSummaryPackage()
    m.default_expires = opt("presence_mwi", "default_expires", 3600)
    reg.register(m)
    r = RegPackage()
    r.default_expires = opt("presence_reginfo", "default_expires", 3761)
    reg.register(r)
    return reg
