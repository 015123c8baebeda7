"""Hardened parsing and VersionedBody."""

from __future__ import annotations

import concurrent.futures

import pytest

from presenced.events.formats.xml import (
    MAX_BODY_SIZE,
    MAX_DEPTH,
    BodyError,
    VersionedBody,
    escape_attr,
    escape_text,
    parse_xml,
)


def assert_reason_ok(err: BodyError) -> None:
    reason = err.reason
    assert reason == str(err)
    assert reason and "\n" not in reason and "\r" not in reason
    assert reason.isascii() and reason.isprintable()
    assert len(reason) <= 120


def rejected(body: bytes) -> BodyError:
    with pytest.raises(BodyError) as info:
        parse_xml(body)
    assert_reason_ok(info.value)
    return info.value


def test_parses_plain_document():
    root = parse_xml(b'<?xml version="1.0"?><a xmlns="urn:x"><b>t</b></a>')
    assert root.tag == "{urn:x}a"
    assert root[0].text == "t"


def test_body_error_is_value_error():
    assert issubclass(BodyError, ValueError)


def test_comments_and_pis_are_dropped():
    root = parse_xml(b"<a><!-- c --><?pi x?><b/></a>")
    assert [child.tag for child in root] == ["b"]


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE a><a/>",
        b"<!doctype a><a/>",
        b'<?xml version="1.0"?>\n<!DOCTYPE a [<!ELEMENT a ANY>]><a/>',
        # XXE: external entity reading a local file
        b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>',
        # external DTD over the network
        b'<!DOCTYPE foo SYSTEM "http://127.0.0.1:1/evil.dtd"><foo/>',
        # parameter entities
        b'<!DOCTYPE foo [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x"> %p;]><foo/>',
        # billion laughs
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
        b"]><lolz>&lol2;</lolz>",
        # an ENTITY declaration outside a DOCTYPE is still refused up front
        b'<a><!ENTITY x "y"></a>',
    ],
)
def test_dtd_and_entities_rejected(body):
    err = rejected(body)
    assert "DOCTYPE" in err.reason


def test_doctype_hidden_in_utf16_rejected():
    body = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
    rejected(body.encode("utf-16"))


def test_doctype_hidden_in_utf7_is_not_interpreted():
    # '+ADw-' is '<' in UTF-7; the parser is pinned to UTF-8 so this never
    # turns into markup.
    body = b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE a+AD4-+ADw-a/+AD4-'
    rejected(body)


def test_undefined_entity_rejected():
    err = rejected(b"<a>&ent;</a>")
    assert "malformed XML" in err.reason


def test_predefined_and_character_entities_work():
    assert parse_xml(b"<a>&lt;&amp;&#65;&#x42;</a>").text == "<&AB"


def test_depth_limit_exact():
    ok = b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH
    assert parse_xml(ok).tag == "a"
    too_deep = b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1)
    assert "deeper" in rejected(too_deep).reason


def test_very_deep_nesting_rejected():
    rejected(b"<a>" * 100000 + b"</a>" * 100000)


def test_size_limit():
    filler = MAX_BODY_SIZE - len(b"<a></a>")
    assert parse_xml(b"<a>" + b"x" * filler + b"</a>").tag == "a"
    err = rejected(b"<a>" + b"x" * (filler + 1) + b"</a>")
    assert "too large" in err.reason


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"", "empty"),
        (b"   \r\n", "empty"),
        (b"<a><b></a>", "malformed"),
        (b"<a>", "malformed"),
        (b"not xml at all", "malformed"),
        (b"<a/><b/>", "malformed"),
        (b"<a>\x00</a>", "NUL"),
        (b"<a>\xff\xfe</a>", "malformed"),
    ],
)
def test_malformed_rejected_with_reason(body, needle):
    assert needle in rejected(body).reason


def test_reason_is_ascii_even_for_non_ascii_markup():
    err = rejected("<é></è>".encode())
    assert "malformed" in err.reason


def test_body_error_reason_is_sanitised():
    err = BodyError("bad\r\nthing \u00e9" + "x" * 500)
    assert_reason_ok(err)
    assert err.reason.startswith("bad thing ?")


def test_accepts_bytearray_memoryview_and_str():
    assert parse_xml(bytearray(b"<a/>")).tag == "a"
    assert parse_xml(memoryview(b"<a/>")).tag == "a"
    assert parse_xml("<a>é</a>").text == "é"
    with pytest.raises(TypeError):
        parse_xml(42)  # type: ignore[arg-type]


def test_parser_is_usable_from_many_threads():
    bodies = [b'<a xmlns="urn:x"><b id="%d"/></a>' % i for i in range(200)]

    def work(body: bytes) -> str:
        return parse_xml(body)[0].get("id")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, bodies)) == [str(i) for i in range(200)]


def test_escape_helpers():
    assert escape_attr('a<b>&"c\t\n\r') == "a&lt;b&gt;&amp;&quot;c&#9;&#10;&#13;"
    assert escape_text('a<b>&"\r') == 'a&lt;b&gt;&amp;"&#13;'
    assert escape_text("plain") == "plain"
    assert escape_attr("x\x01y") == "x\ufffdy"


# -- VersionedBody ---------------------------------------------------------


def test_versioned_body_renders_versions():
    vb = VersionedBody(b'<x version="', b'" state="full"/>')
    assert vb.render(0) == b'<x version="0" state="full"/>'
    assert vb.render(1) == b'<x version="1" state="full"/>'
    assert vb.render(2) == b'<x version="2" state="full"/>'
    assert vb.render(4294967296) == b'<x version="4294967296" state="full"/>'
    assert not vb.is_fixed


def test_versioned_body_rejects_bad_versions():
    vb = VersionedBody(b"a", b"b")
    with pytest.raises(ValueError):
        vb.render(-1)
    with pytest.raises(TypeError):
        vb.render(1.5)  # type: ignore[arg-type]


def test_versioned_body_fixed_ignores_version():
    vb = VersionedBody.fixed(b"Messages-Waiting: yes\r\n")
    assert vb.is_fixed
    assert vb.render(0) == vb.render(7) == b"Messages-Waiting: yes\r\n"


def test_versioned_body_from_root_only_touches_version():
    root = parse_xml(
        b'<r xmlns="urn:r" xmlns:v="urn:v" a="version=&quot;0&quot;" v:version="9">'
        b'<c version="0">version="0"</c></r>'
    )
    vb = VersionedBody.from_root(root)
    outputs = [vb.render(v) for v in (0, 1, 2, 12345)]
    for v, out in zip((0, 1, 2, 12345), outputs, strict=True):
        reparsed = parse_xml(out)
        assert reparsed.get("version") == str(v)
        assert reparsed.get("{urn:v}version") == "9"
        assert reparsed.get("a") == 'version="0"'
        assert reparsed[0].get("version") == "0"
        assert reparsed[0].text == 'version="0"'
    # apart from the version digits the renderings are byte-identical
    head0, _, tail0 = outputs[0].partition(b' version="0"')
    head2, _, tail2 = outputs[2].partition(b' version="2"')
    assert head0 == head2 and tail0 == tail2


def test_versioned_body_equality():
    assert VersionedBody(b"a", b"b") == VersionedBody(b"a", b"b")
    assert VersionedBody.fixed(b"ab") != VersionedBody(b"a", b"b")
    assert len({VersionedBody(b"a", b"b"), VersionedBody(b"a", b"b")}) == 1
