"""dialog-info validation and BLF composition."""

from __future__ import annotations

import pytest

from presenced.events.formats.dialoginfo import (
    NS_DIALOG_INFO,
    compose_dialoginfo,
    compose_dialoginfo_sla,
    validate_dialoginfo,
)
from presenced.events.formats.xml import BodyError, VersionedBody, parse_xml

D = f"{{{NS_DIALOG_INFO}}}"
ENTITY = "sip:100@pbx.example.com"


def dialog(did: str, state: str, *, direction: str = "recipient", call_id: str | None = None) -> str:
    cid = f' call-id="{call_id}"' if call_id else ""
    return (
        f'<dialog id="{did}"{cid} direction="{direction}"><state>{state}</state>'
        f"<remote><identity>sip:200@pbx.example.com</identity></remote></dialog>"
    )


def dinfo(
    *dialogs: str, version: str | None = "7", state: str = "full", entity: str = "sip:100@pub"
) -> bytes:
    ver = f' version="{version}"' if version is not None else ""
    return (
        f'<?xml version="1.0"?>\n<dialog-info xmlns="{NS_DIALOG_INFO}"{ver} state="{state}"'
        f' entity="{entity}">{"".join(dialogs)}</dialog-info>'
    ).encode()


def dialogs_of(vb: VersionedBody, version: int = 0) -> list[tuple[str, str]]:
    root = parse_xml(vb.render(version))
    return [(d.get("id"), d.findtext(D + "state")) for d in root.iterchildren(D + "dialog")]


# -- validation ------------------------------------------------------------


def test_valid_documents():
    validate_dialoginfo(dinfo(dialog("a", "confirmed")))
    validate_dialoginfo(dinfo())
    validate_dialoginfo(dinfo(dialog("a", "Early"), state="partial"))


def test_missing_version_is_tolerated():
    validate_dialoginfo(dinfo(dialog("a", "early"), version=None))


@pytest.mark.parametrize(
    "body,needle",
    [
        (dinfo(version="-1"), "version"),
        (dinfo(version="abc"), "version"),
        (dinfo(state="bogus"), "state"),
        (dinfo().replace(b' state="full"', b""), "state"),
        (dinfo().replace(b' entity="sip:100@pub"', b""), "entity"),
        (dinfo('<dialog direction="recipient"><state>early</state></dialog>'), "without id"),
        (dinfo('<dialog id="a"/>'), "without state"),
        (dinfo(dialog("a", "ringing")), "unknown dialog state"),
        (dinfo(dialog("a", "early", direction="sideways")), "direction"),
        (b'<dialog-info version="1" state="full" entity="sip:a@b"/>', "namespace"),
        (b'<presence xmlns="urn:ietf:params:xml:ns:pidf"/>', "not dialog-info"),
        (b"<dialog-info", "malformed"),
    ],
)
def test_invalid_documents(body, needle):
    with pytest.raises(BodyError) as info:
        validate_dialoginfo(body)
    assert needle in info.value.reason


# -- composition -----------------------------------------------------------


def test_compose_collects_dialogs_and_sets_root():
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", "confirmed")), dinfo(dialog("b", "early"))])
    for version in (0, 1, 2, 99):
        out = vb.render(version)
        validate_dialoginfo(out)
        root = parse_xml(out)
        assert root.get("version") == str(version)
        assert root.get("state") == "full"
        assert root.get("entity") == ENTITY
    assert dialogs_of(vb) == [("a", "confirmed"), ("b", "early")]


def test_renders_differ_only_in_version():
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", "confirmed"))])
    assert vb.render(1).replace(b'version="1"', b'version="2"', 1) == vb.render(2)


def test_duplicate_dialog_ids_collapse_first_wins():
    newer = dinfo(dialog("a", "confirmed", call_id="new"))
    older = dinfo(dialog("a", "confirmed", call_id="old"), dialog("b", "early"))
    vb = compose_dialoginfo(ENTITY, [newer, older])
    root = parse_xml(vb.render(0))
    assert [d.get("id") for d in root.iterchildren(D + "dialog")] == ["a", "b"]
    assert root.find(D + "dialog").get("call-id") == "new"


@pytest.mark.parametrize(
    "newer,older,expected",
    [
        ("confirmed", "early", "confirmed"),
        ("early", "confirmed", "confirmed"),  # out-of-order PUBLISH: never regress
        ("early", "terminated", "terminated"),
        ("terminated", "confirmed", "terminated"),
        ("trying", "proceeding", "proceeding"),
    ],
)
def test_duplicate_ids_never_regress(newer, older, expected):
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", newer)), dinfo(dialog("a", older))])
    assert dialogs_of(vb) == [("a", expected)]


def test_duplicates_inside_one_publication_collapse():
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", "early"), dialog("a", "early"))])
    assert dialogs_of(vb) == [("a", "early")]


@pytest.mark.parametrize(
    "states,expected",
    [
        (["confirmed", "early"], "early"),
        (["terminated", "confirmed", "proceeding"], "confirmed"),
        (["trying", "proceeding", "terminated"], "proceeding"),
        (["terminated", "trying"], "trying"),
        (["terminated", "terminated"], "terminated"),
    ],
)
def test_force_single_dialog_picks_by_state(states, expected):
    bodies = [dinfo(dialog(f"d{i}", s)) for i, s in enumerate(states)]
    chosen = dialogs_of(compose_dialoginfo(ENTITY, bodies, force_single_dialog=True))
    assert len(chosen) == 1
    assert chosen[0][1] == expected


def test_force_single_dialog_tie_goes_to_highest_priority():
    bodies = [dinfo(dialog("newest", "confirmed")), dinfo(dialog("older", "confirmed"))]
    assert dialogs_of(compose_dialoginfo(ENTITY, bodies, force_single_dialog=True)) == [
        ("newest", "confirmed")
    ]


def test_force_single_dialog_uses_the_non_regressed_state():
    # "a" is early in the newest body but already confirmed elsewhere; "b" is
    # ringing. The stale early copy of "a" must not be what gets chosen.
    bodies = [dinfo(dialog("a", "early")), dinfo(dialog("a", "confirmed"), dialog("b", "early"))]
    assert dialogs_of(compose_dialoginfo(ENTITY, bodies, force_single_dialog=True)) == [("b", "early")]


def test_force_single_dialog_with_one_dialog_is_unchanged():
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", "confirmed"))], force_single_dialog=True)
    assert dialogs_of(vb) == [("a", "confirmed")]


def test_all_terminated_is_a_valid_idle_document():
    vb = compose_dialoginfo(ENTITY, [dinfo(dialog("a", "terminated")), dinfo(dialog("b", "terminated"))])
    out = vb.render(3)
    validate_dialoginfo(out)
    assert dialogs_of(vb) == [("a", "terminated"), ("b", "terminated")]


def test_no_publications_gives_empty_full_document():
    vb = compose_dialoginfo(ENTITY, [])
    out = vb.render(0)
    validate_dialoginfo(out)
    root = parse_xml(out)
    assert len(root) == 0 and root.get("entity") == ENTITY


def test_bad_publications_and_id_less_dialogs_are_skipped():
    bodies = [b"<oops", dinfo("<dialog><state>early</state></dialog>", dialog("a", "early"))]
    assert dialogs_of(compose_dialoginfo(ENTITY, bodies)) == [("a", "early")]


def test_entity_is_escaped():
    entity = 'sip:a&"<b>@x'
    assert parse_xml(compose_dialoginfo(entity, []).render(1)).get("entity") == entity


def test_extension_elements_and_prefixes_survive():
    body = (
        f'<di:dialog-info xmlns:di="{NS_DIALOG_INFO}" xmlns:sa="urn:sa" version="1" state="full"'
        ' entity="sip:a@b"><di:dialog id="x"><di:state>confirmed</di:state><sa:line>2</sa:line>'
        "</di:dialog><sa:extra/></di:dialog-info>"
    ).encode()
    root = parse_xml(compose_dialoginfo(ENTITY, [body]).render(0))
    assert root.findtext(f"{D}dialog/{{urn:sa}}line") == "2"
    assert root.find("{urn:sa}extra") is not None


# -- dialog;sla ------------------------------------------------------------


def test_sla_passes_newest_through_with_version():
    newest = dinfo(dialog("n", "confirmed"), entity="sip:line1@pbx")
    vb = compose_dialoginfo_sla(ENTITY, [newest, dinfo(dialog("o", "early"))])
    for v in (0, 1, 2):
        root = parse_xml(vb.render(v))
        assert root.get("version") == str(v)
        assert root.get("entity") == "sip:line1@pbx"
        assert [d.get("id") for d in root.iterchildren(D + "dialog")] == ["n"]


def test_sla_fills_missing_entity_and_state():
    body = f'<dialog-info xmlns="{NS_DIALOG_INFO}">{dialog("a", "early")}</dialog-info>'.encode()
    root = parse_xml(compose_dialoginfo_sla(ENTITY, [body]).render(4))
    assert root.get("entity") == ENTITY
    assert root.get("state") == "full"
    assert root.get("version") == "4"


def test_sla_empty_document():
    out = compose_dialoginfo_sla(ENTITY, []).render(1)
    validate_dialoginfo(out)
    root = parse_xml(out)
    assert (root.get("version"), root.get("state"), root.get("entity"), len(root)) == ("1", "full", ENTITY, 0)


# -- a publication's own history (RFC 4235 §3.7.1) ---------------------------


def test_keep_terminated_keeps_a_final_state_final():
    from presenced.events.formats.dialoginfo import keep_terminated

    old = dinfo(dialog("a", "terminated"), dialog("b", "confirmed"))
    new = dinfo(dialog("a", "early"), dialog("b", "terminated"), dialog("c", "early"))
    got = compose_dialoginfo("sip:100@pub", [keep_terminated(old, new)])
    assert dialogs_of(got) == [("a", "terminated"), ("b", "terminated"), ("c", "early")]


def test_keep_terminated_leaves_other_documents_as_they_are():
    from presenced.events.formats.dialoginfo import keep_terminated

    new = dinfo(dialog("a", "early"))
    assert keep_terminated(dinfo(dialog("a", "confirmed")), new) is new
    assert keep_terminated(dinfo(dialog("z", "terminated")), new) is new
    assert keep_terminated(b"<not xml", new) is new
