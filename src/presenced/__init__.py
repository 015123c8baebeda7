"""presenced: a SIP presence server and library.

Public surface: `SipCore` (the sans-I/O server core), `Presence` (Kamailio's
presence functions as methods), `EventPackage`/`EventRegistry` (plug-ins),
`load_config`, and the `sip` message layer.
"""

__version__ = "0.1.0"

from presenced import _build

# Before any hot-path module is imported: compiled (mypyc) or pure Python.
_build.select(__path__[0])

__all__ = ["EventPackage", "EventRegistry", "Presence", "SipCore", "__version__", "load_config"]


def __getattr__(name: str):
    # Lazy re-exports keep `import presenced` (and `presenced --version`) cheap.
    if name == "SipCore":
        from presenced.core.server import SipCore

        return SipCore
    if name == "Presence":
        from presenced.api.presence import Presence

        return Presence
    if name in ("EventPackage", "EventRegistry"):
        from presenced import events

        return getattr(events, name)
    if name == "load_config":
        from presenced.config import load_config

        return load_config
    raise AttributeError(name)
