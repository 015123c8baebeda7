"""Property tests: evaluation never raises, permissions only grow, order is
irrelevant, filtering only removes."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from policy_support import load, rule, ruleset

from presenced.policy import (
    SUB_HANDLING,
    Transformations,
    apply_transformations,
    evaluate,
    identity_key,
    parse_rules,
)
from presenced.policy.xsdtime import parse_xs_datetime

SETTINGS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

OWNER = "sip:alice@example.com"
USERS = ["alice", "bob", "Bob", "eve"]
DOMAINS = ["example.com", "EXAMPLE.com", "corp.example", "evil.example"]
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

uris = st.one_of(
    st.builds(
        lambda s, u, d: f"{s}:{u}@{d}",
        st.sampled_from(["sip", "sips", "pres"]),
        st.sampled_from(USERS),
        st.sampled_from(DOMAINS),
    ),
    st.sampled_from(["tel:+12125551234", "tel:+1-212-555-1234", "mailto:bob@example.com"]),
)
watchers = st.one_of(uris, uris.map(lambda u: u + ";transport=tcp"), st.text(max_size=30))
spheres = st.one_of(st.none(), st.sampled_from(["work", "home", "Work", "travel", ""]))
nows = st.one_of(
    st.floats(min_value=T0 - 86400 * 3, max_value=T0 + 86400 * 3),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _stamp(offset_hours: int, tz: str) -> str:
    moment = dt.datetime.fromtimestamp(T0 + offset_hours * 3600, dt.UTC)
    if tz == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    shift = dt.timedelta(hours=hours, minutes=minutes) * sign
    return (moment + shift).strftime("%Y-%m-%dT%H:%M:%S") + tz


stamps = st.builds(_stamp, st.integers(-48, 48), st.sampled_from(["Z", "+01:00", "-05:00", "+05:30"]))

one_xml = uris.map(lambda u: f'<one id="{u}"/>')
except_xml = st.one_of(
    uris.map(lambda u: f'<except id="{u}"/>'),
    st.sampled_from(DOMAINS).map(lambda d: f'<except domain="{d}"/>'),
)
many_xml = st.builds(
    lambda domain, excepts: (
        f"<many{'' if domain is None else f' domain={chr(34)}{domain}{chr(34)}'}>{''.join(excepts)}</many>"
    ),
    st.one_of(st.none(), st.sampled_from(DOMAINS)),
    st.lists(except_xml, max_size=3),
)
identity_xml = st.lists(st.one_of(one_xml, many_xml, st.just("<x:unknown-id/>")), max_size=3).map(
    lambda kids: "<identity>" + "".join(kids) + "</identity>"
)
sphere_xml = st.lists(st.sampled_from(["work", "home", "WORK", "meeting"]), min_size=1, max_size=3).map(
    lambda vals: f'<sphere value="{" ".join(vals)}"/>'
)
validity_xml = st.lists(st.tuples(stamps, stamps), min_size=1, max_size=3).map(
    lambda pairs: "<validity>" + "".join(f"<from>{a}</from><until>{b}</until>" for a, b in pairs) + "</validity>"
)
condition_xml = st.one_of(identity_xml, sphere_xml, validity_xml, st.just("<x:unsupported/>"))
conditions_xml = st.one_of(st.none(), st.lists(condition_xml, max_size=3).map("".join))

selector_xml = {
    "provide-services": st.sampled_from(
        [
            "<pr:all-services/>",
            "<pr:service-uri-scheme>sip</pr:service-uri-scheme>",
            "<pr:service-uri>tel:+12125550199</pr:service-uri>",
            "<pr:occurrence-id>t-im</pr:occurrence-id>",
            "<pr:class>desk</pr:class>",
        ]
    ),
    "provide-persons": st.sampled_from(
        ["<pr:all-persons/>", "<pr:occurrence-id>p2</pr:occurrence-id>", "<pr:class>main</pr:class>"]
    ),
    "provide-devices": st.sampled_from(
        [
            "<pr:all-devices/>",
            "<pr:deviceID>urn:uuid:00000000-0000-4000-8000-000000000002</pr:deviceID>",
            "<pr:class>phone</pr:class>",
        ]
    ),
}
component_xml = st.one_of(
    *[
        st.lists(sel, max_size=2).map(lambda kids, name=name: f"<pr:{name}>{''.join(kids)}</pr:{name}>")
        for name, sel in selector_xml.items()
    ]
)
attribute_xml = st.one_of(
    st.builds(
        lambda name, value: f"<pr:provide-{name}>{value}</pr:provide-{name}>",
        st.sampled_from(["activities", "mood", "note", "class", "deviceID", "sphere", "relationship"]),
        st.sampled_from(["true", "false", "1", "0"]),
    ),
    st.sampled_from(["false", "bare", "thresholds", "full"]).map(
        lambda v: f"<pr:provide-user-input>{v}</pr:provide-user-input>"
    ),
    st.just('<pr:provide-unknown-attribute ns="urn:example:foo" name="hobby">true</pr:provide-unknown-attribute>'),
    st.just("<pr:provide-all-attributes/>"),
)
transformations_xml = st.one_of(st.none(), st.lists(st.one_of(component_xml, attribute_xml), max_size=5).map("".join))
subs = st.one_of(st.none(), st.sampled_from(list(SUB_HANDLING)))


@st.composite
def rule_lists(draw, min_size=0, max_size=5):
    count = draw(st.integers(min_size, max_size))
    return [
        rule(f"r{i}", conditions=draw(conditions_xml), sub=draw(subs), transformations=draw(transformations_xml))
        for i in range(count)
    ]


def _rank(decision) -> int:
    return -1 if decision is None else SUB_HANDLING[decision.sub_handling]


def _grants(decision) -> Transformations:
    return Transformations() if decision is None else decision.transformations


@SETTINGS
@given(rule_lists(), watchers, spheres, nows, st.booleans())
def test_evaluation_never_raises(rules, watcher, sphere, now, authenticated) -> None:
    rs = parse_rules(ruleset(*rules))
    d = evaluate(rs, watcher, OWNER, now_unix=now, sphere=sphere, authenticated=authenticated)
    if d is not None:
        assert d.matched_rules and set(d.matched_rules) <= set(rs.rule_ids)
        assert list(d.matched_rules) == [i for i in rs.rule_ids if i in d.matched_rules]
        explicit = [r.sub_handling for r in rs.rules if r.id in d.matched_rules and r.sub_handling]
        expected = max(explicit, key=SUB_HANDLING.__getitem__) if explicit else "block"
        assert d.sub_handling == expected


@SETTINGS
@given(rule_lists(), watchers, spheres, nows, st.booleans(), conditions_xml)
def test_adding_a_matching_allow_rule_never_lowers_the_result(
    rules, watcher, sphere, now, authenticated, conditions
) -> None:
    kw = dict(now_unix=now, sphere=sphere, authenticated=authenticated)
    before = evaluate(parse_rules(ruleset(*rules)), watcher, OWNER, **kw)
    # An unconditional allow rule always matches: the result must be allow.
    with_open = evaluate(parse_rules(ruleset(*rules, rule("extra", sub="allow"))), watcher, OWNER, **kw)
    assert with_open is not None and with_open.sub_handling == "allow"
    assert with_open.transformations.covers(_grants(before))
    # An allow rule with arbitrary conditions: allow if it matched, else unchanged.
    extended = evaluate(
        parse_rules(ruleset(*rules, rule("extra", conditions=conditions, sub="allow"))), watcher, OWNER, **kw
    )
    if extended is not None and "extra" in extended.matched_rules:
        assert extended.sub_handling == "allow"
    else:
        assert extended == before
    assert _rank(extended) >= _rank(before)
    assert _grants(extended).covers(_grants(before))


@SETTINGS
@given(rule_lists(), rule_lists(min_size=1, max_size=2), watchers, spheres, nows, st.booleans())
def test_adding_any_rule_never_lowers_a_decision(rules, more, watcher, sphere, now, authenticated) -> None:
    kw = dict(now_unix=now, sphere=sphere, authenticated=authenticated)
    more = [r.replace('<rule id="r', '<rule id="m', 1) for r in more]
    before = evaluate(parse_rules(ruleset(*rules)), watcher, OWNER, **kw)
    after = evaluate(parse_rules(ruleset(*rules, *more)), watcher, OWNER, **kw)
    if before is not None:
        assert after is not None
        assert set(before.matched_rules) <= set(after.matched_rules)
        assert _rank(after) >= _rank(before)
        assert after.transformations.covers(before.transformations)


@SETTINGS
@given(rule_lists(), watchers, spheres, nows, st.booleans())
def test_rule_order_does_not_matter(rules, watcher, sphere, now, authenticated) -> None:
    kw = dict(now_unix=now, sphere=sphere, authenticated=authenticated)
    forward = evaluate(parse_rules(ruleset(*rules)), watcher, OWNER, **kw)
    backward = evaluate(parse_rules(ruleset(*reversed(rules))), watcher, OWNER, **kw)
    assert (forward is None) == (backward is None)
    if forward is not None:
        assert forward.sub_handling == backward.sub_handling
        assert forward.transformations == backward.transformations
        assert forward.matched_rules == tuple(reversed(backward.matched_rules))


@SETTINGS
@given(rule_lists(max_size=4), watchers)
def test_unauthenticated_only_matches_rules_without_identity(rules, watcher) -> None:
    rs = parse_rules(ruleset(*rules))
    d = evaluate(rs, watcher, OWNER, now_unix=T0, sphere="work", authenticated=False)
    for rule_id in d.matched_rules if d else ():
        r = next(r for r in rs.rules if r.id == rule_id)
        assert not any(type(c).__name__ == "IdentityCondition" for c in r.conditions)


PIDF = load("rich-pidf.xml")


def _component_ids(body: bytes) -> set[str]:
    return {el.get("id") for el in etree.fromstring(body) if el.get("id")}


@SETTINGS
@given(transformations_xml, transformations_xml)
def test_filtering_only_removes_and_is_monotone(first, second) -> None:
    def grants(xml):
        d = evaluate(parse_rules(ruleset(rule("r", transformations=xml))), "sip:x@y.example", OWNER, now_unix=T0)
        return d.transformations

    a, b = grants(first), grants(second)
    out_a = apply_transformations(PIDF, a)
    out_ab = apply_transformations(PIDF, a | b)
    assert _component_ids(out_a) <= _component_ids(out_ab) <= _component_ids(PIDF)
    tags_a = {el.tag for el in etree.fromstring(out_a).iter()}
    tags_ab = {el.tag for el in etree.fromstring(out_ab).iter()}
    assert tags_a <= tags_ab
    # (Not a fixed point in general: a <class> selector picks a component
    # whose <rpid:class> is then stripped unless provide-class is granted.)


@SETTINGS
@given(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)),
    st.integers(-14 * 60, 14 * 60),
)
def test_xs_datetime_matches_python(moment, offset_minutes) -> None:
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    local = moment.astimezone(tz)
    text = local.isoformat()
    if offset_minutes == 0 and not text.endswith("+00:00"):
        text += "Z"
    assert abs(parse_xs_datetime(text) - moment.timestamp()) < 1e-5
    assert abs(parse_xs_datetime(text.replace("+00:00", "Z")) - moment.timestamp()) < 1e-5


@SETTINGS
@given(st.text(max_size=60))
def test_identity_key_never_raises(text) -> None:
    identity_key(text)
