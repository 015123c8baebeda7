"""reginfo validation, composition and rendering (RFC 3680)."""

from __future__ import annotations

import pytest

from presenced.events.formats.reginfo import (
    NS_REGINFO,
    ContactEntry,
    compose_reginfo,
    render_reginfo,
    validate_reginfo,
)
from presenced.events.formats.xml import BodyError, parse_xml

RI = f"{{{NS_REGINFO}}}"


def contact(
    cid: str = "c1",
    uri: str = "sip:alice@192.0.2.1",
    state: str = "active",
    event: str = "registered",
    extra: str = "",
) -> str:
    return f'<contact id="{cid}" state="{state}" event="{event}"{extra}><uri>{uri}</uri></contact>'


def registration(aor: str, rid: str, *contacts: str, state: str = "active") -> str:
    return f'<registration aor="{aor}" id="{rid}" state="{state}">{"".join(contacts)}</registration>'


def reginfo(*regs: str, version: str | None = "0", state: str = "full") -> bytes:
    ver = f' version="{version}"' if version is not None else ""
    return f'<reginfo xmlns="{NS_REGINFO}"{ver} state="{state}">{"".join(regs)}</reginfo>'.encode()


def test_valid_documents():
    validate_reginfo(
        reginfo(registration("sip:alice@example.com", "r1", contact(extra=' expires="3600" q="0.5"')))
    )
    validate_reginfo(reginfo(version=None))
    validate_reginfo(reginfo(registration("sip:a@b", "r", state="init"), state="partial"))


@pytest.mark.parametrize(
    "body,needle",
    [
        (b'<reginfo version="0" state="full"/>', "namespace"),
        (reginfo(state="most"), "state"),
        (reginfo(version="x"), "version"),
        (reginfo('<registration id="r" state="active"/>'), "aor"),
        (reginfo('<registration aor="sip:a@b" state="active"/>'), "without id"),
        (reginfo(registration("sip:a@b", "r", state="on")), "registration state"),
        (reginfo(registration("sip:a@b", "r", contact(state="gone"))), "contact state"),
        (reginfo(registration("sip:a@b", "r", contact(event="poked"))), "event"),
        (reginfo(registration("sip:a@b", "r", contact(extra=' expires="soon"'))), "expires"),
        (reginfo(registration("sip:a@b", "r", '<contact id="c" state="active" event="created"/>')), "uri"),
    ],
)
def test_invalid_documents(body, needle):
    with pytest.raises(BodyError) as info:
        validate_reginfo(body)
    assert needle in info.value.reason


def test_compose_merges_and_deduplicates_by_aor():
    newer = reginfo(registration("sip:alice@example.com", "r1", contact("c-new")))
    older = reginfo(
        registration("sip:alice@example.com", "r9", contact("c-old")),
        registration("sip:bob@example.com", "r2", contact("c-bob")),
    )
    vb = compose_reginfo("sip:alice@example.com", [newer, older])
    for version in (0, 1, 2):
        out = vb.render(version)
        validate_reginfo(out)
        root = parse_xml(out)
        assert (root.get("version"), root.get("state")) == (str(version), "full")
    regs = list(parse_xml(vb.render(0)).iterchildren(RI + "registration"))
    assert [(r.get("aor"), r.get("id")) for r in regs] == [
        ("sip:alice@example.com", "r1"),
        ("sip:bob@example.com", "r2"),
    ]
    assert regs[0].find(RI + "contact").get("id") == "c-new"


def test_compose_never_repeats_a_registration_id():
    a = reginfo(registration("sip:a@x", "r1", contact()))
    b = reginfo(registration("sip:b@x", "r1", contact()))
    root = parse_xml(compose_reginfo("sip:a@x", [a, b]).render(0))
    assert [r.get("aor") for r in root.iterchildren(RI + "registration")] == ["sip:a@x"]


def test_compose_empty_and_broken():
    root = parse_xml(compose_reginfo("sip:a@x", [b"<nope", b""]).render(3))
    assert root.tag == RI + "reginfo" and len(root) == 0 and root.get("version") == "3"


def test_render_reginfo_round_trips():
    contacts = [
        ContactEntry(
            "c1",
            "sip:alice@192.0.2.1:5060;transport=tcp",
            "active",
            "registered",
            expires=3600,
            q="0.8",
            callid="abc@h",
            cseq=12,
            duration_registered=30,
        ),
        ContactEntry("c2", "sip:alice@198.51.100.7", "terminated", "expired"),
    ]
    vb = render_reginfo("sip:alice@example.com", "r1", "active", contacts)
    for version in (0, 1, 2):
        out = vb.render(version)
        validate_reginfo(out)
        assert parse_xml(out).get("version") == str(version)
    reg = parse_xml(vb.render(0))[0]
    assert (reg.get("aor"), reg.get("id"), reg.get("state")) == ("sip:alice@example.com", "r1", "active")
    first, second = list(reg)
    assert first.attrib == {
        "id": "c1",
        "state": "active",
        "event": "registered",
        "expires": "3600",
        "q": "0.8",
        "callid": "abc@h",
        "cseq": "12",
        "duration-registered": "30",
    }
    assert first.findtext(RI + "uri") == "sip:alice@192.0.2.1:5060;transport=tcp"
    assert second.attrib == {"id": "c2", "state": "terminated", "event": "expired"}


def test_render_reginfo_escapes():
    vb = render_reginfo(
        'sip:a&"<b>@x',
        'r"1',
        "terminated",
        [ContactEntry("c<", "sip:<x>&@y", "terminated", "unregistered", callid='"q"')],
    )
    out = vb.render(9)
    validate_reginfo(out)
    reg = parse_xml(out)[0]
    assert reg.get("aor") == 'sip:a&"<b>@x' and reg.get("id") == 'r"1'
    assert reg[0].get("id") == "c<" and reg[0].get("callid") == '"q"'
    assert reg[0].findtext(RI + "uri") == "sip:<x>&@y"


def test_render_reginfo_without_contacts():
    out = render_reginfo("sip:a@b", "r", "init", []).render(0)
    validate_reginfo(out)
    assert len(parse_xml(out)[0]) == 0


@pytest.mark.parametrize(
    "reg_state,contact_",
    [
        ("registered", ContactEntry("c", "sip:u@h", "active", "registered")),
        ("active", ContactEntry("c", "sip:u@h", "up", "registered")),
        ("active", ContactEntry("c", "sip:u@h", "active", "hello")),
        ("active", ContactEntry("c", "sip:u@h", "active", "created", expires=-1)),
    ],
)
def test_render_reginfo_invalid_values(reg_state, contact_):
    with pytest.raises(ValueError):
        render_reginfo("sip:a@b", "r", reg_state, [contact_])
