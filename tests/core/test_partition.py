"""core/partition.py: which worker owns a raw message (serve --workers N)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from presenced.core.engine import PresenceEngine
from presenced.core.partition import Partitioner, branch_mark, owner_of, partition_hash
from presenced.events import default_registry
from presenced.sip import tokens
from presenced.transaction.layer import TransactionLayer, new_branch
from presenced.transaction.timers import TimerHeap


def _engine() -> PresenceEngine:
    timers = TimerHeap()
    return PresenceEngine(default_registry(None), TransactionLayer(timers), timers)


KEY = _engine().presentity_key


def parts(n: int = 4, index: int = 0) -> Partitioner:
    return Partitioner(n, index, KEY)


def request(method: str, uri: str, to: str | None = None, *, compact: bool = False) -> bytes:
    to = to or f"<{uri}>"
    t = "t" if compact else "To"
    return (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n"
            f"From: <sip:w@x>;tag=1\r\n{t}: {to}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_initial_requests_go_to_the_presentitys_owner():
    for n in (2, 3, 7, 64):
        p = parts(n)
        for i in range(50):
            uri = f"sip:user{i}@example.com"
            want = owner_of(KEY(uri), n)
            assert p.classify(request("PUBLISH", uri)) == want
            assert p.classify(request("SUBSCRIBE", uri)) == want
            assert p.classify(request("CANCEL", uri)) == want


def test_uri_spellings_of_one_presentity_share_an_owner():
    p = parts(64)
    same = ["sip:Alice@example.com", "sip:Alice@EXAMPLE.com;transport=udp", "pres:Alice@example.com",
            "sip:Alice@example.com?subject=x", "sip:alice@example.com"]
    assert len({p.classify(request("SUBSCRIBE", u)) for u in same}) == 1


def test_in_dialog_requests_follow_the_tag():
    p = parts(5)
    for i in range(40):
        pres = KEY(f"sip:u{i}@example.com")
        tag = p.dialog_tag(pres)
        assert len(tag) == 22 and tag.startswith("h")  # 64 random bits after the marker
        msg = request("SUBSCRIBE", "sip:10.0.0.2:5060", f"<sip:u{i}@example.com>;tag={tag}")
        assert p.classify(msg) == owner_of(pres, 5)
        # another worker count reads the same tag: the owner is recomputed, not stored
        assert parts(3, 1).classify(msg) == owner_of(pres, 3)
    assert p.dialog_tag("sip:a@b") != p.dialog_tag("sip:a@b")


def test_responses_follow_the_branch_of_the_worker_that_sent():
    p = parts(3, 0)
    before = tokens.BRANCH_MARK
    try:
        tokens.BRANCH_MARK = branch_mark(2)
        branch = new_branch()
    finally:
        tokens.BRANCH_MARK = before
    assert branch.startswith("z9hG4bKw2.") and len(branch) == len("z9hG4bKw2.") + 16
    resp = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch};rport=5060\r\n"
            "From: <sip:a@b>;tag=h0001.x\r\nTo: <sip:w@x>;tag=9\r\nCall-ID: c\r\nCSeq: 1 NOTIFY\r\n\r\n").encode()
    assert p.classify(resp) == 2
    assert p.classify(resp.replace(b"\r\nVia:", b"\r\nv:")) == 2
    # a branch naming a worker that does not exist, or not ours: the reader keeps it
    assert p.classify(resp.replace(b"w2.", b"w7.")) == 0
    assert p.classify(resp.replace(b"w2.", b"")) == 0


def test_register_goes_to_the_owner_of_its_aor():
    p = parts(7)
    msg = request("REGISTER", "sip:example.com", "<sip:bob@example.com>")
    assert p.classify(msg) == owner_of(KEY("sip:bob@example.com"), 7)
    assert p.classify(request("REGISTER", "sip:example.com", "sip:bob@example.com;x=1")) == \
        owner_of(KEY("sip:bob@example.com"), 7)


def test_compact_to_header():
    p = parts(9)
    pres = KEY("sip:c@example.com")
    msg = request("SUBSCRIBE", "sip:10.0.0.2", f"<sip:c@example.com>;tag={p.dialog_tag(pres)}", compact=True)
    assert p.classify(msg) == owner_of(pres, 9)


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"SUBSCRIBE", b"\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n",
    request("OPTIONS", "sip:x@example.com"),                   # not a presence request
    request("SUBSCRIBE", "sip:10.0.0.2", "<sip:x@y>;tag=0123456789abcdef"),  # a single-process tag
    request("SUBSCRIBE", "sip:10.0.0.2", "<sip:x@y>;tag=hzzzz.1"),           # looks marked, is not
    request("PUBLISH", "http://example.com/"),                 # the engine answers 416
    request("PUBLISH", "sip:"),                                # unparsable R-URI
    b"PUBLISH sip:a@b SIP/2.0\r\n\r\n",                          # no To at all
])
def test_anything_else_stays_with_the_worker_that_read_it(data):
    assert parts(4, 3).classify(data) == 3


def test_random_bytes_never_raise():
    import random

    rnd = random.Random(7)
    p = parts(4, 1)
    base = request("SUBSCRIBE", "sip:a@example.com", "<sip:a@example.com>;tag=h00ff.0011223344556677")
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        assert 0 <= p.classify(bytes(data)) < 4


def test_bad_worker_numbers():
    with pytest.raises(ValueError):
        Partitioner(65, 0, KEY)
    with pytest.raises(ValueError):
        Partitioner(2, 2, KEY)


def test_owner_is_the_same_in_every_process():
    uris = [f"sip:user{i}@example.com" for i in range(20)]
    here = [owner_of(u, 7) for u in uris]
    # FNV-1a 32 test vector: fnv1a("foobar") = 0xbf9cf968; only the user part counts, case folded.
    assert partition_hash("sip:foobar@example.com") == 0xF968
    assert partition_hash("sip:FooBar@other.example.org:5070") == 0xF968
    assert partition_hash("tel:+15551234") == partition_hash("sip:+15551234@h")
    code = ("from presenced.core.partition import owner_of; "
            f"print([owner_of(u, 7) for u in {uris!r}])")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == str(here)
