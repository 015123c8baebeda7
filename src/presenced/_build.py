"""Which hot-path modules are compiled with mypyc, and which build is running.

COMPILED_MODULES is the one list of compiled modules: setup.py builds exactly
these (unless PRESENCED_PURE_PYTHON=1 or no C compiler), and at run time
`presenced/__init__.py` calls `select()` before any of them is imported.

A module not listed stays pure Python. A listed module must type-check under
mypy (`make typecheck`), must not be monkeypatched, and must not have classes
subclassed by pure-Python modules (mypyc forbids that); see
docs/architecture.md "Compiled hot path". Stdlib only: setup.py execs it.
"""

from __future__ import annotations

import os
import sys

PURE_ENV = "PRESENCED_PURE_PYTHON"

COMPILED_MODULES: tuple[str, ...] = (
    "presenced.sip.errors",
    "presenced.sip.framing",
    "presenced.sip.headers",
    "presenced.sip.message",
    "presenced.sip.tokens",
    "presenced.sip.uri",
    "presenced.transaction.layer",
    "presenced.transaction.timers",
    "presenced.core.engine",
    "presenced.core.partition",
    "presenced.core.journal",
    "presenced.core.server",
    "presenced.core.state",
    "presenced.events.formats.dialoginfo",
    "presenced.events.formats.pidf",
    "presenced.events.formats.reginfo",
    "presenced.events.formats.summary",
    "presenced.events.formats.watcherinfo",
    "presenced.events.formats.xml",
)

# Set by select(): "mypyc" or "pure Python (<why>)".
MODE = "pure Python (not selected yet)"


def source_paths(src: str) -> list[str]:
    """The .py files of COMPILED_MODULES under a source root (setup.py, Makefile)."""
    return [os.path.join(src, *m.split(".")) + ".py" for m in COMPILED_MODULES]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "no", "false", "off")


def _why_pure(src: str) -> str | None:
    """None when every listed module has an up-to-date extension next to its .py."""
    if _truthy(os.environ.get(PURE_ENV)):
        return f"{PURE_ENV}=1"
    from importlib.machinery import EXTENSION_SUFFIXES

    # Only a source checkout (editable install, extensions built in place)
    # can have sources edited after compiling; an installed wheel writes .py
    # and .so in arbitrary order, so mtimes say nothing there.
    check_mtime = os.path.exists(os.path.join(os.path.dirname(src), "setup.py"))
    missing = stale = 0
    first_stale = ""
    for py in source_paths(src):
        base = py[:-3]
        ext = next((base + s for s in EXTENSION_SUFFIXES if os.path.exists(base + s)), None)
        if ext is None:
            missing += 1
        elif check_mtime and os.path.exists(py) and os.path.getmtime(py) > os.path.getmtime(ext):
            stale += 1
            first_stale = first_stale or os.path.relpath(py, src)
    if missing == len(COMPILED_MODULES):
        return "not compiled"
    if missing:
        return f"incomplete build: {missing} compiled module(s) missing; reinstall"
    if stale:
        return f"stale build: {first_stale} changed after compiling; reinstall (make venv)"
    return None


class _PreferSource:
    """Meta-path finder that loads the .py of a listed module, never its extension."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in _LISTED or not path:
            return None
        from importlib.util import spec_from_file_location

        leaf = fullname.rpartition(".")[2] + ".py"
        for d in path:
            f = os.path.join(d, leaf)
            if os.path.exists(f):
                return spec_from_file_location(fullname, f)
        return None


_LISTED = frozenset(COMPILED_MODULES)


def select(package_dir: str) -> str:
    """Decide once, before the first hot-path import, whether extensions may load.

    Compiled and pure modules must never mix (mypyc modules of one build call
    each other directly), so any reason to run pure applies to all of them.
    """
    global MODE
    why = _why_pure(os.path.dirname(package_dir))
    if why is None:
        MODE = "mypyc"
    else:
        MODE = f"pure Python ({why})"
        if why != "not compiled" and not any(isinstance(f, _PreferSource) for f in sys.meta_path):
            sys.meta_path.insert(0, _PreferSource())
        if why.startswith(("stale", "incomplete")):
            import warnings

            warnings.warn(f"presenced: running pure Python: {why}", RuntimeWarning, stacklevel=3)
    return MODE


def compiled() -> bool:
    """True when the hot path actually runs compiled (checked on a loaded module)."""
    from importlib.machinery import ExtensionFileLoader

    import presenced.sip.message as m

    return isinstance(getattr(m, "__loader__", None), ExtensionFileLoader)
