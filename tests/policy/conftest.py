"""Fixtures for the policy (pres-rules) tests."""

from __future__ import annotations

import pathlib
import sys

try:  # the package may not be installed in the venv yet
    import presenced  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))
