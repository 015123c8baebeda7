"""The compiled (mypyc) hot path and its pure-Python fallback.

CI (`.ci/run` sets PRESENCED_CI=1) must run the suite compiled, so a module
that stopped compiling fails here instead of silently running slower; the
pure-Python sources must keep passing the sans-I/O tests on their own.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from presenced import _build
from presenced.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PURE_TESTS = ["tests/sip", "tests/transaction", "tests/core"]


def _require_compiled() -> bool:
    env = os.environ
    return not _build._truthy(env.get(_build.PURE_ENV)) and (
        _build._truthy(env.get("PRESENCED_CI")) or _build._truthy(env.get("PRESENCED_REQUIRE_COMPILED"))
    )


def test_ci_runs_the_compiled_hot_path():
    if not _require_compiled():
        pytest.skip(f"compiled build not required here (hot path: {_build.MODE})")
    assert _build.MODE == "mypyc", (
        f"hot path is {_build.MODE}: the mypyc build failed or is stale; "
        "see `pip install -v -e .` output (or run `make typecheck`)"
    )
    assert _build.compiled()
    import importlib
    from importlib.machinery import ExtensionFileLoader

    for name in _build.COMPILED_MODULES:
        mod = importlib.import_module(name)
        assert isinstance(mod.__loader__, ExtensionFileLoader), name
    from presenced.sip import message

    assert message._scan_head is not None, "sip/_scan.c was not built"


@pytest.mark.timeout(240)
def test_pure_python_sources_pass_the_sans_io_tests():
    """PRESENCED_PURE_PYTHON=1 at import time loads every listed module from its .py."""
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(sys.argv[1:])\n"
        "from presenced import _build\n"
        "loaded = {m: sys.modules[m].__file__ for m in _build.COMPILED_MODULES if m in sys.modules}\n"
        "print('MODE', _build.MODE)\n"
        "print('LOADED', len(loaded), sorted(m for m, f in loaded.items() if f.endswith('.py')))\n"
        "print('NOT-PY', sorted(m for m, f in loaded.items() if not f.endswith('.py')))\n"
        "from presenced.sip import message\n"
        "print('SCAN', message._scan_head)\n"
        "sys.exit(rc)\n"
    )
    env = dict(os.environ, **{_build.PURE_ENV: "1"})
    r = subprocess.run(
        [sys.executable, "-c", code, "-q", "-x", "-p", "no:cacheprovider", *PURE_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=230,
    )
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    assert f"MODE pure Python ({_build.PURE_ENV}=1)" in out
    assert "NOT-PY []" in out, out[-2000:]
    assert "SCAN None" in out  # the C scanner is off too: the Python path is what runs
    for name in ("presenced.sip.message", "presenced.sip.uri", "presenced.transaction.layer",
                 "presenced.core.engine", "presenced.core.server"):
        assert repr(name) in out.split("LOADED", 1)[1], name


def _fake_tree(tmp_path: pathlib.Path, compiled: bool = True, checkout: bool = True) -> pathlib.Path:
    """A source checkout (setup.py next to src/) or an installed layout."""
    from importlib.machinery import EXTENSION_SUFFIXES

    src = tmp_path / "src"
    src.mkdir(parents=True)
    if checkout:
        (tmp_path / "setup.py").write_text("")
    for py in _build.source_paths(str(src)):
        p = pathlib.Path(py)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
        if compiled:
            p.with_suffix(EXTENSION_SUFFIXES[0]).write_bytes(b"")
    return src


def test_pure_python_when_a_source_changed_after_compiling(tmp_path, monkeypatch):
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    src = _fake_tree(tmp_path)
    assert _build._why_pure(str(src)) is None
    edited = pathlib.Path(_build.source_paths(str(src))[3])
    later = time.time() + 10
    os.utime(edited, (later, later))
    why = _build._why_pure(str(src))
    assert why is not None and why.startswith("stale build") and edited.name in why


def test_installed_wheel_ignores_file_times(tmp_path, monkeypatch):
    """pip writes a wheel's .py and .so in any order: no stale check outside a checkout."""
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    src = _fake_tree(tmp_path, checkout=False)
    later = time.time() + 10
    for py in _build.source_paths(str(src)):
        os.utime(py, (later, later))
    assert _build._why_pure(str(src)) is None


def test_pure_python_reasons(tmp_path, monkeypatch):
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    assert _build._why_pure(str(_fake_tree(tmp_path / "a", compiled=False))) == "not compiled"
    src = _fake_tree(tmp_path / "b")
    next(src.rglob("engine.cpython*")).unlink()
    assert _build._why_pure(str(src)).startswith("incomplete build")
    monkeypatch.setenv(_build.PURE_ENV, "1")
    assert _build._why_pure(str(_fake_tree(tmp_path / "c"))) == f"{_build.PURE_ENV}=1"


def test_version_says_which_build_runs():
    out = CliRunner().invoke(main, ["--version"]).output
    assert out.startswith("presenced ") and f"(hot path: {_build.MODE})" in out


def test_every_listed_module_exists():
    for py in _build.source_paths(str(SRC)):
        assert os.path.exists(py), py


def test_compiled_modules_avoid_mypyc_pitfalls():
    """Python that mypyc compiles differently: caught here, not under load."""
    problems = []
    for py in _build.source_paths(str(SRC)):
        rel = os.path.relpath(py, ROOT)
        tree = ast.parse(pathlib.Path(py).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # one type per local name: `except A as e` then `except B as e` breaks
                types: dict[str, set[str]] = {}
                for h in ast.walk(node):
                    if isinstance(h, ast.ExceptHandler) and h.name and h.type is not None:
                        types.setdefault(h.name, set()).add(ast.unparse(h.type))
                problems += [f"{rel}:{node.lineno} `except ... as {n}` with {sorted(t)}"
                             for n, t in types.items() if len(t) > 1]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__new__":
                problems.append(f"{rel}:{node.lineno} X.__new__(cls) on a native class")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(0xD800 <= ord(c) <= 0xDFFF for c in node.value):
                    problems.append(f"{rel}:{node.lineno} surrogate in a str literal")
    assert not problems, "\n".join(problems)


def test_no_pure_python_subclass_of_a_compiled_class():
    """mypyc classes cannot be subclassed by interpreted code (tests included)."""
    compiled = {os.path.abspath(p) for p in _build.source_paths(str(SRC))}
    classes = {}
    for p in compiled:
        for node in ast.walk(ast.parse(pathlib.Path(p).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = os.path.relpath(p, ROOT)
    problems = []
    for p in [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]:
        if str(p.resolve()) in compiled:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = ast.unparse(base).rpartition(".")[2]
                    if name in classes:
                        problems.append(f"{p.relative_to(ROOT)}: {node.name}({name}) from {classes[name]}")
    assert not problems, "\n".join(problems)
