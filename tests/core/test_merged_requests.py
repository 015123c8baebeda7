"""RFC 3261 §8.2.2.2: the same initial SUBSCRIBE by another path is refused."""

from __future__ import annotations

from core_support import Harness


def _initial(h: Harness, branch: str, cseq: int = 1, call_id: str = "merge-1") -> bytes:
    return (f"SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bob@example.com>;tag=bt\r\nTo: <sip:alice@example.com>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} SUBSCRIBE\r\nContact: <sip:bob@127.0.0.1:40001>\r\nEvent: presence\r\n"
            f"Expires: 600\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_merged_copy_gets_482_and_makes_no_second_dialog():
    h = Harness.make(**{"presence_xml.force_active": 1})
    assert h.send(_initial(h, "a1"), 40001).status == 200
    r = h.send(_initial(h, "b2"), 40001)
    assert r.status == 482
    assert len(h.engine.subs_by_dialog) == 1


def test_a_retransmission_is_answered_not_refused():
    h = Harness.make(**{"presence_xml.force_active": 1})
    first = h.send(_initial(h, "a1"), 40001)
    again = h.send(_initial(h, "a1"), 40001)
    assert again.status == first.status == 200 and again.to.tag == first.to.tag


def test_another_cseq_or_call_id_is_a_new_request():
    h = Harness.make(**{"presence_xml.force_active": 1})
    assert h.send(_initial(h, "a1"), 40001).status == 200
    assert h.send(_initial(h, "a2", cseq=2), 40001).status == 200
    assert h.send(_initial(h, "a3", call_id="merge-2"), 40001).status == 200


def test_only_for_a_while():
    h = Harness.make(**{"presence_xml.force_active": 1})
    assert h.send(_initial(h, "a1"), 40001).status == 200
    h.advance(40)  # past MERGE_WINDOW (and Timer J)
    assert h.send(_initial(h, "b1", cseq=1, call_id="merge-3"), 40001).status == 200  # evicts the old key
    assert h.send(_initial(h, "b2"), 40001).status == 200
