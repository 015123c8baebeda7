"""Tests for presenced.config: Kamailio defaults, precedence, and operator-facing messages."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:  # the package may not be installed in the venv yet
    import presenced  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT / "src"))

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presenced.config import (
    SCHEMA,
    SOURCES,
    Config,
    ConfigError,
    example_toml,
    load_config,
)


def write(tmp_path: Path, text: str, name: str = "presenced.toml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(*args, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


# --- defaults ---------------------------------------------------------------


def test_kamailio_defaults_spot_check():
    """Values from the spec's §2.1/§2.3–2.6 tables, not guessed."""
    c = load_config(None)
    p = c.presence
    assert p.min_expires == 0
    assert p.max_expires == 3600
    assert p.expires_offset == 0
    assert p.subs_db_mode == 2
    assert p.clean_period == 100
    assert p.db_update_period == 100
    assert p.subs_respond_200 == 1
    assert p.timeout_rm_subs == 1
    assert p.retrieve_order == 0
    assert p.retrieve_order_by == "priority"
    assert p.publ_cache == 1
    assert p.min_expires_action == 1
    assert p.send_fast_notify == 1
    assert p.fetch_rows == 500
    assert p.cseq_offset == 0
    assert p.startup_mode == 1
    assert p.local_log_level == 2
    assert p.presentity_table == "presentity"
    assert p.active_watchers_table == "active_watchers"
    assert p.watchers_table == "watchers"
    assert p.db_url == ""
    x = c.presence_xml
    assert x.force_active == 0
    assert x.disable_bla == 1
    assert x.disable_winfo == 0
    assert x.integrated_xcap_server == 0
    assert x.xcapauth_userdel_reason == "probation"
    assert x.presence_single_body_priorities == "Available|Ringing|On the Phone"
    assert x.presence_single_body_lookup_element == "note"
    assert x.default_expires == 3600
    assert x.xcap_server == []
    assert c.presence_mwi.default_expires == 3600
    assert c.presence_dialoginfo.force_single_dialog == 0
    assert c.presence_dialoginfo.force_dummy_dialog == 0
    assert c.presence_dialoginfo.default_expires == 3600
    assert c.presence_reginfo.default_expires == 3761  # RFC 3680 §4.4; Kamailio says 3600
    assert c.presence_reginfo.aggregate_presentities == 0


def test_presenced_defaults():
    c = load_config(None)
    assert c.listen.addresses == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"]
    assert c.db.url == "sqlite://presenced.db"
    assert c.http.listen == "" and c.http.token == ""
    assert c.auth.require == [] and c.auth.realm == ""
    assert c.registrar.enabled == 1
    assert c.log.level == "info" and c.log.format == "console"
    assert c.warnings == []
    assert set(c.sources.values()) == {"default"}


def test_schema_covers_all_kamailio_params():
    # 45 presence parameters: 38 (5.6) + 6 DMQ (6.1) + dmq_peer_id (master).
    assert len(SCHEMA["presence"]) == 45
    # 16 Kamailio presence_xml parameters plus presenced's no_rules_policy.
    assert len(SCHEMA["presence_xml"]) == 17
    assert set(SCHEMA["presence_dialoginfo"]) == {
        "force_single_dialog", "force_dummy_dialog", "default_expires"}
    assert SCHEMA["presence"]["enable_subs_dmq"].since == "6.1"
    assert SCHEMA["presence"]["dmq_peer_id"].since == "master"
    for sec, params in SCHEMA.items():
        for name, p in params.items():
            assert p.section == sec and p.name == name
            assert p.kind in ("int", "bool", "str", "list")
            assert p.doc and "\n" not in p.doc
            assert p.applicable or p.not_applicable


def test_default_config_object_equals_loaded_defaults():
    assert Config() == load_config(None)


# --- file loading and line numbers ------------------------------------------


def test_file_values_and_sources(tmp_path):
    path = write(tmp_path, """
        # comment
        [presence]
        max_expires = 7200
        subs_db_mode = 0
        force_delete = true

        [presence_xml]
        force_active = 1
        xcap_server = ["xcap.example.com:8080", "10.0.0.1"]
    """)
    c = load_config(path)
    assert c.presence.max_expires == 7200
    assert c.presence.subs_db_mode == 0
    assert c.presence.force_delete == 1  # TOML true stored as Kamailio 0/1
    assert c.presence_xml.force_active == 1
    assert c.presence_xml.xcap_server == ["xcap.example.com:8080", "10.0.0.1"]
    assert c.sources["presence.max_expires"] == "file"
    assert c.origins["presence.max_expires"] == f"{path}:3"
    assert c.sources["presence.min_expires"] == "default"
    assert c.warnings == []


def test_file_wrong_type_names_file_and_line(tmp_path):
    path = write(tmp_path, """
        [listen]
        addresses = ["udp:127.0.0.1:5060"]

        [presence]
        max_expires = 7200
        min_expires = "x"
    """)
    assert error(path) == f'{path}:6: presence.min_expires: expected an integer, got "x"'


def test_file_line_number_found_within_its_table(tmp_path):
    # The same key name in an earlier table must not be reported.
    path = write(tmp_path, """
        [presence_xml]
        default_expires = 3600

        [presence_mwi]
        default_expires = "soon"
    """)
    assert error(path) == (f'{path}:5: presence_mwi.default_expires: expected an integer, '
                           f'got "soon"')


def test_file_line_number_dotted_and_inline_keys(tmp_path):
    path = write(tmp_path, """
        log.level = "info"
        presence.subs_db_mode = 9
    """)
    assert error(path) == f"{path}:2: presence.subs_db_mode: 9 is out of range 0..3"
    path = write(tmp_path, "presence = { max_expires = 60, publ_cache = 5 }\n", "inline.toml")
    assert error(path) == f"{path}:1: presence.publ_cache: 5 is out of range 0..2"


def test_file_unknown_parameter_and_section(tmp_path):
    path = write(tmp_path, """
        [presence]
        max_expires = 60
        min_expire = 10
    """)
    assert error(path) == (f"{path}:3: unknown parameter 'presence.min_expire' "
                           f"(did you mean min_expires?)")
    path = write(tmp_path, """
        [presense]
        min_expires = 10
    """, "s.toml")
    assert error(path) == f"{path}:1: unknown section 'presense' (did you mean presence?)"


def test_file_out_of_range(tmp_path):
    path = write(tmp_path, "[presence]\n\n\nsubs_db_mode = 7\n")
    assert error(path) == f"{path}:4: presence.subs_db_mode: 7 is out of range 0..3"


def test_file_bool_rejects_2_and_other_strings(tmp_path):
    path = write(tmp_path, "[presence_xml]\nforce_active = 2\n")
    assert error(path) == (f"{path}:2: presence_xml.force_active: expected 0 or 1 "
                           f"(or true/false, yes/no, on/off), got 2")
    path = write(tmp_path, '[presence_xml]\nforce_active = "maybe"\n', "b.toml")
    assert error(path).endswith('expected 0 or 1 (or true/false, yes/no, on/off), got "maybe"')


def test_file_bool_takes_the_words_set_takes(tmp_path):
    """`--set presence_xml.force_active=yes` worked while the same in a file failed."""
    for word, value in [("yes", 1), ("On", 1), ("no", 0), ("false", 0)]:
        path = write(tmp_path, f'[presence_xml]\nforce_active = "{word}"\n', f"{word}.toml")
        assert load_config(path).presence_xml.force_active == value


def test_file_int_rejects_bool_and_float(tmp_path):
    path = write(tmp_path, "[presence]\nclean_period = true\n")
    assert error(path).endswith("presence.clean_period: expected an integer, got true")
    path = write(tmp_path, "[presence]\nclean_period = 10.5\n", "f.toml")
    assert error(path).endswith("presence.clean_period: expected an integer, got 10.5")


def test_file_section_must_be_table(tmp_path):
    path = write(tmp_path, 'presence = 3\n')
    assert error(path) == f"{path}:1: 'presence' must be a table ([presence]), got 3"


def test_invalid_toml_syntax(tmp_path):
    path = write(tmp_path, "[presence]\nmin_expires = = 3\n")
    msg = error(path)
    assert msg.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in msg and "column" in msg


def test_missing_file():
    assert error("/nonexistent/presenced.toml") == (
        "/nonexistent/presenced.toml: cannot read config file: No such file or directory")


# --- --set and CLI overrides -------------------------------------------------


def test_set_overrides_file_and_cli_overrides_set(tmp_path):
    path = write(tmp_path, """
        [presence]
        max_expires = 7200
        clean_period = 30
        [log]
        level = "warning"
    """)
    c = load_config(path, ["presence.max_expires=600", "log.level=error"],
                    {"log.level": "debug", "db.url": None})
    assert c.presence.max_expires == 600
    assert c.sources["presence.max_expires"] == "--set"
    assert c.presence.clean_period == 30
    assert c.sources["presence.clean_period"] == "file"
    assert c.log.level == "debug"
    assert c.sources["log.level"] == "cli"
    assert c.sources["db.url"] == "default"  # None overrides are skipped
    assert set(c.sources.values()) <= set(SOURCES)


def test_last_set_wins():
    c = load_config(None, ["presence.fetch_rows=10", "presence.fetch_rows = 20 "])
    assert c.presence.fetch_rows == 20


@pytest.mark.parametrize("text,value", [
    ("1", 1), ("0", 0), ("true", 1), ("False", 0), ("yes", 1), ("no", 0), ("on", 1),
    ("off", 0),
])
def test_set_bool_spellings(text, value):
    assert load_config(None, [f"presence.force_delete={text}"]).presence.force_delete == value


def test_set_list_parsing():
    c = load_config(None, ["listen.addresses=udp:127.0.0.1:5070, TCP:[::1]:5070,ws:h:80"])
    assert c.listen.addresses == ["udp:127.0.0.1:5070", "tcp:[::1]:5070", "ws:h:80"]
    c = load_config(None, ["auth.require=subscribe,PUBLISH,SUBSCRIBE"])
    assert c.auth.require == ["SUBSCRIBE", "PUBLISH"]
    c = load_config(None, ["auth.require="])
    assert c.auth.require == []
    c = load_config(None, ['presence_xml.xcap_server=["a.example:80", "b.example"]'])
    assert c.presence_xml.xcap_server == ["a.example:80", "b.example"]


def test_cli_overrides_accept_typed_values():
    c = load_config(None, overrides={"listen.addresses": ("tls:0.0.0.0:5061",),
                                     "presence.max_expires": 60,
                                     "db.url": "memory"})
    assert c.listen.addresses == ["tls:0.0.0.0:5061"]
    assert c.presence.max_expires == 60
    assert c.db.url == "memory"
    assert c.sources["listen.addresses"] == "cli"


def test_set_exact_error_messages():
    assert error(None, ["presense.min_expires=10"]) == (
        "unknown section 'presense' in --set presense.min_expires=10 (did you mean presence?)")
    assert error(None, ["presence.min_expire=10"]) == (
        "unknown parameter 'presence.min_expire' (did you mean min_expires?)")
    assert error(None, ["presence.min_expires=abc"]) == (
        "presence.min_expires: expected an integer, got 'abc'")
    assert error(None, ["presence.subs_db_mode=7"]) == (
        "presence.subs_db_mode: 7 is out of range 0..3")
    assert error(None, ["presence.force_delete=maybe"]) == (
        "presence.force_delete: expected 0 or 1 (or true/false, yes/no, on/off), got 'maybe'")
    assert error(None, ["log.level=verbose"]) == (
        "log.level: 'verbose' is not one of debug, info, warning, error")
    assert error(None, ["presence.min_expires"]) == (
        "invalid --set 'presence.min_expires': expected SECTION.PARAM=VALUE")
    assert error(None, ["presence.fetch_rows=0"]) == (
        "presence.fetch_rows: 0 is below the minimum 1")


def test_param_in_wrong_section_suggests_the_right_one():
    assert error(None, ["presence.force_active=1"]) == (
        "unknown parameter 'presence.force_active' (did you mean presence_xml.force_active?)")


def test_cli_override_unknown_key():
    assert error(None, overrides={"lisen.addresses": "udp:h:1"}) == (
        "unknown section 'lisen' in command-line override lisen.addresses "
        "(did you mean listen?)")


def test_error_carries_key():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["presence.subs_db_mode=7"])
    assert ei.value.key == "presence.subs_db_mode"


# --- value validation --------------------------------------------------------


@pytest.mark.parametrize("addr,fragment", [
    ("sctp:1.2.3.4:5060", "is not proto:host:port with proto udp, tcp, tls, ws or wss"),
    ("1.2.3.4:5060", "is not proto:host:port with proto"),
    ("udp:1.2.3.4", "has no valid port"),
    ("udp:1.2.3.4:70000", "has no valid port"),
    ("udp::5060", "has no host"),
    ("udp:::1:5060", "IPv6 hosts go in brackets"),
])
def test_listen_address_errors(addr, fragment):
    msg = error(None, [f"listen.addresses={addr}"])
    assert msg.startswith(f"listen.addresses: '{addr}' ")
    assert fragment in msg


def test_listen_duplicates_and_empty():
    assert error(None, ["listen.addresses=udp:h:1,UDP:h:1"]) == (
        "listen.addresses: 'UDP:h:1' is listed twice")
    assert error(None, ["listen.addresses="]) == (
        "listen.addresses: must list at least one address (proto:host:port)")


@pytest.mark.parametrize("url", [
    "memory", "sqlite:///presenced.db", "sqlite:////var/lib/presenced.db", "sqlite://relative.db",
    "postgresql://u:p@h/db", "postgres://h/db", "mysql://kamailio:kamailiorw@localhost/k",
])
def test_db_url_accepted(url):
    assert load_config(None, [f"db.url={url}"]).db.url == url


@pytest.mark.parametrize("url", ["redis://h", "sqlite://", "text:///x", ""])
def test_db_url_rejected(url):
    assert error(None, [f"db.url={url}"]) == (
        f"db.url: unsupported database URL {url!r} (expected memory, sqlite:///ABSOLUTE/PATH, "
        f"sqlite://RELATIVE/PATH, postgresql://..., postgres://... or mysql://...)")


def test_default_db_is_relative_sqlite_file():
    # Kamailio reads everything after sqlite:// as the path, so the default
    # ./presenced.db is written without a third slash.
    assert load_config(None).db.url == "sqlite://presenced.db"


def test_other_value_checks():
    assert "is not a SIP URI" in error(None, ["presence.server_address=1.2.3.4"])
    assert load_config(None, ["presence.server_address=sip:ps.example.com:5060"])
    assert "is not a valid table name" in error(None, ["presence.presentity_table=x;drop"])
    assert "is not an ORDER BY list" in error(None, ["presence.retrieve_order_by=1;x"])
    assert load_config(None, ["presence.retrieve_order_by=priority desc, received_time"])
    assert load_config(None, ["presence_xml.xcapauth_userdel_reason=probation;retry-after=30"])
    assert "is not host:port" in error(None, ["http.listen=localhost"])
    assert "is not host[:port]" in error(None, ["presence_xml.xcap_server=a:b:c"])
    assert error(None, ["presence.min_expires_action=3"]) == (
        "presence.min_expires_action: 3 is out of range 1..2")
    assert error(None, ["presence.local_log_level=4"]) == (
        "presence.local_log_level: 4 is out of range -5..3")


# --- cross-parameter checks --------------------------------------------------


def test_min_expires_greater_than_max_expires(tmp_path):
    path = write(tmp_path, "[presence]\nmin_expires = 4000\n")
    assert error(path) == (f"presence.min_expires = 4000 ({path}:2) is greater than "
                           f"presence.max_expires = 3600 (default)")
    assert error(None, ["presence.max_expires=10", "presence.min_expires=20"]) == (
        "presence.min_expires = 20 (--set) is greater than presence.max_expires = 10 (--set)")


def test_registrar_ordering():
    assert error(None, ["registrar.min_expires=100000"]) == (
        "registrar.min_expires = 100000 (--set) is greater than "
        "registrar.max_expires = 86400 (default)")
    assert error(None, ["registrar.default_expires=30"]) == (
        "registrar.default_expires = 30 (--set) is below registrar.min_expires = 60 (default)")


def test_operator_warnings():
    c = load_config(None, ["presence.db_update_period=0", "presence_mwi.default_expires=7200",
                           "http.listen=127.0.0.1:8080"])
    assert c.warnings == [
        "presence.db_update_period = 0 (--set): subscriptions will never expire on their own",
        "presence_mwi.default_expires = 7200 (--set) exceeds presence.max_expires = 3600 "
        "(default): requests without Expires get 7200 s, longer than a watcher may ask for",
        'http.listen = "127.0.0.1:8080" (--set) is enabled without http.token: the HTTP API '
        "accepts unauthenticated requests",
    ]
    assert load_config(None, ["http.listen=127.0.0.1:8080", "http.token=s3cret"]).warnings == []


# --- not-applicable parameters -----------------------------------------------


def test_not_applicable_params_warn_not_fail(tmp_path):
    path = write(tmp_path, """
        [presence]
        subs_htable_size = 10
        local_log_facility = "LOG_LOCAL0"
        enable_dmq = 1
    """)
    c = load_config(path, ["presence.notifier_processes=2"])
    assert c.presence.subs_htable_size == 10  # kept for `config show`, otherwise ignored
    assert c.warnings == [  # in schema order
        "--set: presence.notifier_processes is not applicable to presenced (only Kamailio's "
        "DB-only notifier processes use it; presenced sends NOTIFYs from its event loop); "
        "ignored",
        f"{path}:2: presence.subs_htable_size is not applicable to presenced (presenced's "
        "in-memory indexes grow as needed; there is no fixed-size hash table); ignored",
        f"{path}:3: presence.local_log_facility is not applicable to presenced (presenced "
        "does not log to syslog; logs go to stderr (see log.format)); ignored",
        f"{path}:4: presence.enable_dmq is not applicable to presenced (presenced does not "
        "implement Kamailio's DMQ replication); ignored",
    ]


def test_not_applicable_with_invalid_value_still_only_warns():
    c = load_config(None, ["presence.subs_htable_size=big"])
    assert c.presence.subs_htable_size == 9
    assert c.warnings == [
        "--set: presence.subs_htable_size is not applicable to presenced (presenced's "
        "in-memory indexes grow as needed; there is no fixed-size hash table); ignored "
        "(its value is invalid anyway: expected an integer, got 'big')"]


def test_every_not_applicable_param_warns():
    na = [p for ps in SCHEMA.values() for p in ps.values() if not p.applicable]
    assert {p.key for p in na} >= {
        "presence.local_log_facility", "presence.db_table_lock_type",
        "presence.subs_htable_size", "presence.pres_htable_size",
        "presence.notifier_processes", "presence.xavp_cfg", "presence.enable_dmq",
        "presence.dmq_peer_id", "presence.timer_mode", "presence_xml.db_url"}
    sets = []
    for p in na:
        v = {"int": "1", "bool": "1", "str": "x", "list": "x"}[p.kind]
        sets.append(f"{p.key}={v}")
    c = load_config(None, sets)
    assert len(c.warnings) == len(na)
    for p, w in zip(na, c.warnings):
        assert w.startswith(f"--set: {p.key} is not applicable to presenced (")


# --- db_url alias ------------------------------------------------------------


def test_presence_db_url_alias(tmp_path):
    path = write(tmp_path, '[presence]\ndb_url = "mysql://k:pw@db/kamailio"\n')
    c = load_config(path)
    assert c.db.url == "mysql://k:pw@db/kamailio"
    assert c.sources["db.url"] == "file"
    assert c.origins["db.url"] == f"{path}:2 (via presence.db_url)"
    assert c.warnings == []


def test_db_url_alias_precedence(tmp_path):
    path = write(tmp_path, """
        [db]
        url = "sqlite:///a.db"
        [presence]
        db_url = "postgres://h/b"
    """)
    c = load_config(path)  # same source: db.url wins, with a warning
    assert c.db.url == "sqlite:///a.db"
    assert c.warnings == [f"{path}:4: presence.db_url is overridden by db.url ({path}:2); "
                          "set only one of them"]
    c = load_config(path, ["presence.db_url=mysql://h/c"])  # higher source wins
    assert c.db.url == "mysql://h/c" and c.sources["db.url"] == "--set"
    c = load_config(path, ["presence.db_url=mysql://h/c"], {"db.url": "memory"})
    assert c.db.url == "memory" and c.sources["db.url"] == "cli"
    assert "unsupported database URL" in error(None, ["presence.db_url=oracle://x"])


# --- show / as_dict ------------------------------------------------------------


def test_show_and_as_dict(tmp_path):
    path = write(tmp_path, '[db]\nurl = "mysql://kamailio:kamailiorw@localhost/k"\n')
    c = load_config(path, ["presence.max_expires=600", "http.token=secret"],
                    {"log.level": "debug"})
    text = c.show()
    lines = text.splitlines()
    assert re.search(r'^url = "mysql://kamailio:\*\*\*@localhost/k"\s+# file .*:2$', text, re.M)
    assert any(re.fullmatch(r"max_expires = 600\s+# --set", ln) for ln in lines)
    assert any(re.fullmatch(r'level = "debug"\s+# cli', ln) for ln in lines)
    assert any(re.fullmatch(r"min_expires = 0\s+# default", ln) for ln in lines)
    assert any(re.fullmatch(r"enable_dmq = 0\s+# default; not applicable, ignored", ln)
               for ln in lines)
    assert "secret" not in text and "kamailiorw" not in text
    assert "secret" in c.show(redact=False)
    d = c.as_dict()
    assert d["presence"]["max_expires"] == 600
    assert d["db"]["url"] == "mysql://kamailio:kamailiorw@localhost/k"
    assert c.as_dict(redact=True)["http"]["token"] == "***"
    assert set(d) == set(SCHEMA)
    assert c.get("log.level") == "debug"


def test_show_output_is_loadable_toml(tmp_path):
    """`config show` output can be saved and loaded back to the same values."""
    c = load_config(None, ["presence.max_expires=600", "listen.addresses=udp:h:1"])
    path = write(tmp_path, c.show(redact=False), "shown.toml")
    again = load_config(path)
    assert again.as_dict() == c.as_dict()


# --- example file ------------------------------------------------------------------


EXAMPLE = ROOT / "docs" / "example-config.toml"


def test_committed_example_matches_generator():
    assert EXAMPLE.read_text() == example_toml(), (
        "regenerate with: python -m presenced.config > docs/example-config.toml")


def test_example_loads_cleanly():
    c = load_config(str(EXAMPLE))
    assert c.warnings == []
    assert c.as_dict() == load_config(None).as_dict()


def test_example_documents_every_parameter():
    text = example_toml()
    for sec, params in SCHEMA.items():
        assert f"\n[{sec}]\n" in text
        for name in params:
            assert re.search(rf"^#{name} = ", text, re.M), f"{sec}.{name} missing"


def test_example_uncommented_defaults_round_trip(tmp_path):
    """Uncommenting every line must give valid TOML and exactly the defaults."""
    text = re.sub(r"^#(\w+ = )", r"\1", example_toml(), flags=re.M)
    c = load_config(write(tmp_path, text, "all.toml"))
    assert c.as_dict() == load_config(None).as_dict()
    assert set(c.sources.values()) == {"file"}
    na = [p.key for ps in SCHEMA.values() for p in ps.values() if not p.applicable]
    assert len(c.warnings) == len(na)  # only the not-applicable notices


# --- properties ----------------------------------------------------------------------


int_params = [p for ps in SCHEMA.values() for p in ps.values()
              if p.kind == "int" and p.applicable]


@given(st.sampled_from(int_params), st.integers(-10**6, 10**6))
def test_int_params_accept_exactly_their_range(p, n):
    inside = (p.min is None or n >= p.min) and (p.max is None or n <= p.max)
    try:
        c = load_config(None, [f"{p.key}={n}"])
    except ConfigError as e:
        if inside:  # only a cross-parameter check (message "key = value (...) ...") may refuse
            assert not str(e).startswith(f"{p.key}: ")
        else:
            assert str(e).startswith(f"{p.key}: {n} is ")
    else:
        assert inside and c.get(p.key) == n


@given(st.lists(st.sampled_from(["udp", "tcp", "tls", "ws", "wss"]), min_size=1, max_size=5,
                unique=True),
       st.integers(0, 65535))
def test_listen_round_trip(protos, port):
    addrs = [f"{pr}:10.0.0.1:{port}" for pr in protos]
    c = load_config(None, ["listen.addresses=" + ",".join(addrs)])
    assert c.listen.addresses == addrs


# --------------------------------------------------------------- tls / websocket
def test_tls_client_verification_needs_ca_list(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["tls.verify_certificate=1"])
    assert e.value.key == "tls.verify_certificate" and "tls.ca_list" in str(e.value)


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"tls.ca_list={tmp_path / 'missing.pem'}"])
    assert e.value.key == "tls.ca_list" and "no such file" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["tls.tls_method=SSLv3"])
    assert e.value.key == "tls.tls_method"


def test_websocket_path_and_origins_are_checked():
    c = load_config(None, ["websocket.path=/ws", "websocket.origins=https://A.example.com/, null"])
    assert c.websocket.path == "/ws" and c.websocket.origins == ["https://a.example.com", "null"]
    for bad in ("websocket.path=ws", "websocket.origins=phone.example.com"):
        with pytest.raises(ConfigError) as e:
            load_config(None, [bad])
        assert e.value.key == bad.split("=")[0]


def test_workers_and_kamailio_children_alias(tmp_path):
    assert load_config(None).core.workers == 1
    path = write(tmp_path, "[core]\nchildren = 4\n")
    c = load_config(path)
    assert c.core.workers == 4 and c.origins["core.workers"] == f"{path}:2 (via core.children)"
    c = load_config(path, [], {"core.workers": 2})  # --workers beats the file
    assert c.core.workers == 2 and c.sources["core.workers"] == "cli"
    both = write(tmp_path, "[core]\nworkers = 2\nchildren = 8\n", "both.toml")
    c = load_config(both)
    assert c.core.workers == 2 and "core.children is overridden by core.workers" in c.warnings[0]
    for bad in ("core.workers=0", "core.workers=65", "core.children=65"):
        msg = error(None, [bad])
        assert bad.split("=")[0] in msg and "out of range" in msg
