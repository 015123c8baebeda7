"""Sans-I/O tests of the core: bytes in, bytes out, a fake clock."""

from __future__ import annotations

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE, _HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


import pytest  # noqa: E402

from presenced.logsetup import CALL_ID  # noqa: E402


@pytest.fixture(autouse=True)
def _no_call_id_leak():
    """SipCore.receive tags the context with the request's Call-ID (for logs);
    keep that out of the tests that run after these in the same thread."""
    token = CALL_ID.set(None)
    yield
    CALL_ID.reset(token)
