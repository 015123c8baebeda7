"""sip/_scan.c, the C splitter of well-formed header blocks: for every input it
either gives exactly what message.py's own path gives (start line, headers,
index, body start) or declines (None) so that path runs; a message parses the
same with and without it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presenced.sip import message as m
from presenced.sip.errors import SipParseError


# The pure-Python rerun (tests/test_build_mode.py) checks the .py sources
# pass; the compiled run already explored the inputs at full size.
_PURE = bool(os.environ.get("PRESENCED_PURE_PYTHON"))


def _examples(n: int) -> int:
    return max(10, n // 5) if _PURE else n

scan = pytest.importorskip("presenced.sip._scan").scan_head


def python_path(data: bytes):
    """message.py's own split, in the C scanner's shape (start line, index,
    body start, number of header lines)."""
    try:
        first, headers, index, body_start = m._split_head(data)
    except SipParseError as e:
        return type(e)
    return first, index, body_start, len(headers)


def c_path(data: bytes):
    return scan(data, m._LINE_NAMES, m.MAX_HEADER_BYTES)


def teach(data: bytes) -> None:
    """Let message.py see the names once (the C path only takes known names)."""
    python_path(data)


SUBSCRIBE = (
    b"SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"W\" <sip:w@example.com>;tag=1\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: abc@10.0.0.1\r\n"
    b"CSeq: 1 SUBSCRIBE\r\n"
    b"Contact: <sip:w@10.0.0.1:5060>\r\n"
    b"Event: presence\r\n"
    b"Expires: 600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_the_common_shape_is_split_in_c_exactly_as_in_python():
    teach(SUBSCRIBE)
    got = c_path(SUBSCRIBE)
    assert got is not None
    assert got == python_path(SUBSCRIBE)
    first, index, body_start, count = got
    assert first == "SUBSCRIBE sip:alice@example.com SIP/2.0" and count == 10
    assert index["from"] == ["\"W\" <sip:w@example.com>;tag=1"]
    assert index["call-id"] == ["abc@10.0.0.1"] and body_start == len(SUBSCRIBE)
    # The ordered list is made when asked for, as the Python path makes it.
    msg = m.parse_message(SUBSCRIBE)
    assert msg.headers == m._split_head(SUBSCRIBE)[1] and msg.headers[2] == ("From", "\"W\" <sip:w@example.com>;tag=1")
    assert m.parse_message(msg.to_bytes()).headers == msg.headers


@pytest.mark.parametrize("data", [
    b"SUBSCRIBE sip:a@b SIP/2.0\nVia: x\n\n",                        # bare LF
    b"SUBSCRIBE sip:a@b SIP/2.0\r\nSubject: a\r\n  folded\r\n\r\n",  # folded line
    b"SUBSCRIBE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n",          # no blank line
    b"SUBSCRIBE sip:a@b SIP/2.0\r\nNo-Colon-Here\r\n\r\n",
    b"SUBSCRIBE sip:a@b SIP/2.0\r\nX-Never-Seen-Before-7f3a: 1\r\n\r\n",
    b"SUBSCRIBE sip:a@b SIP/2.0\r\nSubject: \xff\xfe\r\n\r\n",       # not UTF-8
    b"\r\n",
    b"",
])
def test_unusual_input_is_left_to_the_python_path(data):
    assert c_path(data) is None


def test_utf8_values_and_unicode_spaces_strip_as_str_strip_does():
    data = "NOTIFY sip:a@b SIP/2.0\r\nSubject: \u00a0Grüße\u3000 \r\nTo: <sip:a@b>\r\n\r\nbody".encode()
    teach(data)
    got = c_path(data)
    assert got is not None and got == python_path(data)
    assert got[1]["subject"] == ["Grüße"] and data[got[2]:] == b"body"


def test_a_header_block_over_the_limit_is_refused_by_the_python_path():
    data = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: " + b"x" * (m.MAX_HEADER_BYTES + 10) + b"\r\n\r\n"
    teach(b"OPTIONS sip:a@b SIP/2.0\r\nSubject: x\r\n\r\n")
    assert c_path(data) is None
    with pytest.raises(m.MessageTooLarge):
        m.parse_message(data)


def test_wrong_arguments_raise_type_error_and_other_buffers_are_declined():
    assert scan(bytearray(SUBSCRIBE), m._LINE_NAMES, 100) is None  # the Python path takes it
    with pytest.raises(TypeError):
        scan(SUBSCRIBE, ["not a dict"], 10)
    with pytest.raises(TypeError):
        scan(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", {"Via": "not a tuple"}, 100)


_name = st.sampled_from(["Via", "v", "To", "t", "From", "Call-ID", "i", "CSeq", "Contact", "Event", "o",
                         "Expires", "Content-Length", "l", "Subject", "X-A", "via ", "Max-Forwards", "Bad Name",
                         "", "é"])
_value = st.text(alphabet=st.sampled_from(list(" \t;:=<>@,.\"\\abcXYZ09\x0b\x0c\x1c\r\u00a0é\x00")), max_size=12)
_eol = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r"])
_lead = st.sampled_from(["", "", " ", "\t", "\r\n"])


@st.composite
def messages(draw):
    start = draw(st.sampled_from(["SUBSCRIBE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "", "X y"]))
    out = draw(st.sampled_from(["", "\r\n"])) + start + draw(_eol)
    for _ in range(draw(st.integers(0, 6))):
        out += draw(_lead) + draw(_name) + draw(st.sampled_from([":", " :", ""])) + draw(_value) + draw(_eol)
    out += draw(st.sampled_from(["\r\n", "", "\n", "\r\n\r\n"])) + draw(st.sampled_from(["", "body"]))
    return out.encode("utf-8") + draw(st.sampled_from([b"", b"\xff"]))


@settings(max_examples=_examples(400), deadline=None)
@given(messages())
def test_c_and_python_agree_or_c_declines(data):
    want = python_path(data)
    got = c_path(data)
    if got is not None:
        assert got == want
    got = c_path(data)  # the Python path may have learnt names meanwhile
    if got is not None:
        assert got == want

