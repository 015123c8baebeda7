"""Build presenced, compiling the hot path with mypyc when possible.

Everything else (metadata, dependencies, packages) is in pyproject.toml; this
file only adds the optional extensions. The list of compiled modules is
src/presenced/_build.py COMPILED_MODULES. The extensions are optional: with
PRESENCED_PURE_PYTHON=1, without a C compiler, or when mypyc fails, the
install still succeeds and presenced runs the same modules as pure Python
(`presenced --version` says which).
"""

from __future__ import annotations

import os
import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "src")


def _build_module():
    ns: dict = {"__name__": "presenced_build"}
    path = os.path.join(SRC, "presenced", "_build.py")
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), ns)
    return ns


def _remove_inplace_extensions(b) -> None:
    """An editable install that does not compile must not leave an old build behind."""
    from glob import glob

    old = glob(os.path.join(SRC, "presenced_native__mypyc*"))
    old += glob(os.path.join(SRC, "presenced", "sip", "_scan.*.so"))
    for py in b["source_paths"](SRC):
        old += glob(py[:-3] + ".*.so") + glob(py[:-3] + ".*.pyd")
    for path in old:
        os.remove(path)


def _warn(msg: str) -> None:
    # pip shows setup.py's stderr with -v; the runtime also reports the mode.
    print(f"presenced: WARNING: {msg}; installing pure Python", file=sys.stderr)
    warnings.warn(msg)


class OptionalBuildExt(build_ext):
    """build_ext that leaves the package pure Python instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler, missing Python.h, ...
            self._give_up(e)

    failed = False

    def build_extension(self, ext):
        if self.failed:
            return
        try:
            super().build_extension(ext)
        except Exception as e:
            self._give_up(e)

    def _give_up(self, e: Exception) -> None:
        _warn(f"compiling the hot path failed ({type(e).__name__}: {e})")
        self.failed = True
        # A partial build must not load: drop whatever was already written.
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []


def ext_modules():
    b = _build_module()
    if b["_truthy"](os.environ.get(b["PURE_ENV"])):
        print(f"presenced: {b['PURE_ENV']} set: not compiling", file=sys.stderr)
        _remove_inplace_extensions(b)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        _warn(f"mypyc is not available ({e})")
        _remove_inplace_extensions(b)
        return c_extensions()
    try:
        exts = mypycify(
            ["--config-file", "pyproject.toml", *(os.path.relpath(p, HERE) for p in b["source_paths"](SRC))],
            opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"),
            group_name="presenced_native",
        )
    except BaseException as e:  # mypy type errors end in SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        _warn(f"mypyc could not compile the hot path ({type(e).__name__}: {e})")
        _remove_inplace_extensions(b)
        return c_extensions()
    for ext in exts:
        ext.optional = True
    return exts + c_extensions()


def c_extensions():
    """Hand-written C for what mypyc cannot make fast (sip/_scan.c). Built in
    the same pass; without it message.py parses every message itself."""
    from setuptools import Extension

    return [Extension("presenced.sip._scan", [os.path.join("src", "presenced", "sip", "_scan.c")],
                      optional=True, extra_compile_args=["-O2"])]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
