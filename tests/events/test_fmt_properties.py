"""Property tests for the body formats."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presenced.events.formats.dialoginfo import NS_DIALOG_INFO, compose_dialoginfo
from presenced.events.formats.pidf import NS_DM, NS_PIDF, compose_pidf, validate_pidf
from presenced.events.formats.summary import validate_message_summary
from presenced.events.formats.watcherinfo import (
    NS_WATCHERINFO,
    WATCHER_EVENTS,
    WATCHER_STATUSES,
    WatcherEntry,
    render_watcherinfo,
)
from presenced.events.formats.xml import BodyError, escape_attr, escape_text, parse_xml

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_BAD = set(range(0x00, 0x09)) | {0x0B, 0x0C} | set(range(0x0E, 0x20)) | {0xFFFE, 0xFFFF}


def sanitised(s: str) -> str:
    """What an XML 1.0 round trip can give back for `s`."""
    return "".join("\ufffd" if ord(c) in _BAD or 0xD800 <= ord(c) <= 0xDFFF else c for c in s)


any_text = st.text(st.characters(), max_size=40)


@SETTINGS
@given(
    resource=any_text,
    package=any_text,
    entries=st.lists(
        st.tuples(
            any_text,
            any_text,
            st.sampled_from(sorted(WATCHER_STATUSES)),
            st.sampled_from(sorted(WATCHER_EVENTS)),
            st.none() | any_text,
            st.none() | st.integers(0, 2**63),
        ),
        max_size=5,
    ),
    version=st.integers(0, 2**40),
)
def test_watcherinfo_always_parses_and_round_trips(resource, package, entries, version):
    watchers = [WatcherEntry(i, u, s, e, d, x) for i, u, s, e, d, x in entries]
    out = render_watcherinfo(version, "full", resource, package, watchers)
    root = parse_xml(out)
    assert root.tag == f"{{{NS_WATCHERINFO}}}watcherinfo"
    assert root.get("version") == str(version)
    wlist = root[0]
    assert wlist.get("resource") == sanitised(resource)
    assert wlist.get("package") == sanitised(package)
    assert len(wlist) == len(watchers)
    for el, w in zip(wlist, watchers, strict=True):
        assert el.get("id") == sanitised(w.id)
        assert (el.text or "") == sanitised(w.uri)
        assert el.get("display-name") == (None if w.display_name is None else sanitised(w.display_name))


@SETTINGS
@given(any_text)
def test_escape_round_trip(value):
    root = parse_xml(f'<a b="{escape_attr(value)}">{escape_text(value)}</a>'.encode())
    assert root.get("b") == sanitised(value)
    assert (root.text or "") == sanitised(value)


# A pool of publications with overlapping component ids; the "src" attribute
# on each component records which publication it came from.
_IDS = ["a", "b", "c", "d"]


@st.composite
def publication(draw, index: int):
    parts = []
    for tid in draw(st.lists(st.sampled_from(_IDS), max_size=4)):
        basic = draw(st.sampled_from(["open", "closed"]))
        parts.append(f'<tuple id="{tid}" src="{index}"><status><basic>{basic}</basic></status></tuple>')
    for pid in draw(st.lists(st.sampled_from(_IDS + ["p", "q"]), max_size=3)):
        parts.append(f'<dm:person id="{pid}" src="{index}"/>')
    return (
        f'<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" entity="sip:p{index}@x">{"".join(parts)}</presence>'
    ).encode()


@st.composite
def publications(draw):
    n = draw(st.integers(0, 5))
    return [draw(publication(i)) for i in range(n)]


@SETTINGS
@given(publications())
def test_compose_keeps_ids_unique_and_first_wins(bodies):
    out = compose_pidf("sip:alice@example.com", bodies)
    validate_pidf(out)
    root = parse_xml(out)
    got = [(el.get("id"), el.get("src")) for el in root]
    ids = [i for i, _ in got]
    assert len(ids) == len(set(ids))
    expected: dict[str, str] = {}
    for body in bodies:
        for el in parse_xml(body):
            expected.setdefault(el.get("id"), el.get("src"))
    assert dict(got) == expected


_STATES = ["trying", "proceeding", "early", "confirmed", "terminated"]


@SETTINGS
@given(
    st.lists(st.lists(st.tuples(st.sampled_from(_IDS), st.sampled_from(_STATES)), max_size=4), max_size=4),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_dialog_compose_unique_and_monotonic(bodies_spec, single, version):
    bodies = [
        (
            f'<dialog-info xmlns="{NS_DIALOG_INFO}" version="1" state="full" entity="sip:x@y">'
            + "".join(f'<dialog id="{d}"><state>{s}</state></dialog>' for d, s in spec)
            + "</dialog-info>"
        ).encode()
        for spec in bodies_spec
    ]
    root = parse_xml(compose_dialoginfo("sip:x@y", bodies, force_single_dialog=single).render(version))
    assert root.get("version") == str(version)
    got = [(d.get("id"), d.findtext(f"{{{NS_DIALOG_INFO}}}state")) for d in root]
    ids = [i for i, _ in got]
    assert len(ids) == len(set(ids))
    furthest: dict[str, str] = {}
    for spec in bodies_spec:
        for d, s in spec:
            if d not in furthest or _STATES.index(s) > _STATES.index(furthest[d]):
                furthest[d] = s
    if single and len(furthest) > 1:
        assert len(got) == 1
    else:
        assert dict(got) == furthest


@SETTINGS
@given(st.binary(max_size=300))
def test_parse_arbitrary_bytes_only_raises_body_error(data):
    try:
        parse_xml(data)
    except BodyError as exc:
        assert exc.reason.isascii() and "\n" not in exc.reason


@SETTINGS
@given(
    name=st.sampled_from(["Messages-Waiting", "messages-waiting", "MESSAGES-WAITING"]),
    before=st.sampled_from(["", " ", "\t"]),
    after=st.sampled_from(["", " ", "\t "]),
    status=st.sampled_from(["yes", "no", "Yes", "NO"]),
    eol=st.sampled_from(["\r\n", "\n"]),
    counts=st.lists(
        st.tuples(
            st.sampled_from(["Voice-Message", "fax-message", "Text-Message"]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.none() | st.tuples(st.integers(0, 99), st.integers(0, 99)),
        ),
        max_size=3,
    ),
)
def test_message_summary_grammar_variants_accepted(name, before, after, status, eol, counts):
    lines = [f"{name}{before}:{after}{status}"]
    for cls, new, old, urgent in counts:
        line = f"{cls}: {new}/{old}"
        if urgent:
            line += f" ({urgent[0]}/{urgent[1]})"
        lines.append(line)
    validate_message_summary((eol.join(lines) + eol).encode())
