"""Helpers shared by the body-format tests (a uniquely named module, so it
cannot be shadowed by another directory's conftest)."""

from __future__ import annotations

import pathlib
import re

DATA = pathlib.Path(__file__).resolve().parent / "data"
TRACE_DIR = pathlib.Path("/work/shared/docs/client-traces")

CLIENT_BODIES = sorted(p.name for p in DATA.glob("*.xml"))


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def trace_pidf_bodies() -> list[bytes]:
    """Every PIDF body in the shared client traces (empty if not available)."""
    bodies = []
    if TRACE_DIR.is_dir():
        for path in sorted(TRACE_DIR.glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            bodies += [m.group(0).encode() for m in re.finditer(r"<\?xml.*?</presence>", text, re.S)]
    return bodies
