"""presenced configuration: parameter schema, TOML loading and overrides.

presenced takes Kamailio's module-parameter names (``modparam("presence",
"min_expires", 10)`` becomes ``[presence] min_expires = 10``) so an operator can
port a kamailio.cfg without a translation table, and it uses Kamailio's defaults
so a ported config behaves the same.  Kamailio parameters that make no sense
here (hash-table sizes, DMQ, syslog facility, ...) are still accepted, so a
ported config loads, but each one yields a warning in ``Config.warnings``.

The schema *is* the section dataclasses below: every field carries a ``Param``
in its metadata (kind, Kamailio default, range/choices, one-line doc).  That
keeps attribute access typed (``cfg.presence.min_expires: int``) and leaves a
single place to add a parameter; ``SCHEMA``, the example file and the error
messages are all derived from it.

Precedence, lowest to highest: default < config file < ``--set`` < CLI flag.

Database URL: ``db.url`` and Kamailio's ``presence.db_url`` both name the
database.  The one set by the higher-precedence source wins; when both come
from the same source and differ, ``db.url`` wins and a warning is recorded.
The effective URL is always ``cfg.db.url``; nothing else should read
``cfg.presence.db_url``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

__all__ = [
    "SCHEMA",
    "SECTIONS",
    "SOURCES",
    "AuthSection",
    "Config",
    "ConfigError",
    "DbSection",
    "HttpSection",
    "ListenSection",
    "LogSection",
    "TlsSection",
    "WebsocketSection",
    "Param",
    "PresenceDialoginfoSection",
    "PresenceMwiSection",
    "PresenceReginfoSection",
    "PresenceSection",
    "PresenceXmlSection",
    "RegistrarSection",
    "example_toml",
    "load_config",
]

#: Where an effective value can come from, lowest precedence first.
SOURCES = ("default", "file", "--set", "cli")
_RANK = {s: i for i, s in enumerate(SOURCES)}
_META = "presenced.param"


class ConfigError(Exception):
    """A configuration problem as one line an operator can act on.

    ``key`` is the ``section.param`` concerned, when there is one, so callers
    (the CLI, tests) need not parse the message.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class _Bad(Exception):
    """A value problem without location; the caller prefixes 'where: key: '."""


Shown = Callable[[Any], str]
Check = Callable[[Any, Shown], Any]


@dataclass(frozen=True)
class Param:
    """One parameter: the schema entry carried in a section field's metadata."""

    kind: str  # "int" | "bool" (0/1 int, like Kamailio) | "str" | "list" (of str)
    default: Any
    doc: str
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] | None = None  # str: the value; list: each item
    check: Check | None = None  # extra validation; returns the normalised value
    not_applicable: str | None = None  # reason, when presenced ignores it
    since: str | None = None  # Kamailio version that introduced it
    section: str = ""
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def applicable(self) -> bool:
        return self.not_applicable is None

    def describe(self) -> str:
        """Short type/range text, e.g. 'integer 0..3' (used in the example file)."""
        if self.kind == "int":
            if self.min is not None and self.max is not None:
                return f"integer {self.min}..{self.max}"
            if self.min is not None:
                return f"integer >= {self.min}"
            return "integer"
        if self.kind == "bool":
            return "0 or 1"
        if self.kind == "str":
            return "one of " + ", ".join(self.choices) if self.choices else "string"
        if self.choices:
            return "list of " + ", ".join(self.choices)
        return "list of strings"


def _field(p: Param) -> Any:
    if p.kind == "list":
        items = tuple(p.default)
        return field(default_factory=lambda: list(items), metadata={_META: p})
    return field(default=p.default, metadata={_META: p})


def _int(default: int, doc: str, *, min: int | None = None, max: int | None = None,
         na: str | None = None, since: str | None = None) -> Any:
    return _field(Param("int", default, doc, min=min, max=max, not_applicable=na, since=since))


def _bool(default: int, doc: str, *, na: str | None = None, since: str | None = None) -> Any:
    return _field(Param("bool", default, doc, not_applicable=na, since=since))


def _str(default: str, doc: str, *, choices: tuple[str, ...] | None = None,
         check: Check | None = None, na: str | None = None, since: str | None = None) -> Any:
    return _field(Param("str", default, doc, choices=choices, check=check,
                        not_applicable=na, since=since))


def _list(default: list[str], doc: str, *, choices: tuple[str, ...] | None = None,
          check: Check | None = None, na: str | None = None) -> Any:
    return _field(Param("list", default, doc, choices=choices, check=check, not_applicable=na))


# ---------------------------------------------------------------------------
# Value checks (normalise or raise _Bad; the message never names the key)

_PROTOS = ("udp", "tcp", "tls", "ws", "wss")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ORDER_BY = re.compile(
    r"^\s*[A-Za-z_]\w*(\s+(asc|desc))?(\s*,\s*[A-Za-z_]\w*(\s+(asc|desc))?)*\s*$", re.I)
_SUBS_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(;\s*retry-after=\d+)?$")


def _split_hostport(s: str) -> tuple[str, str | None] | None:
    """'host:port' / '[v6]:port' / 'host' -> (host, port or None); None if malformed."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        host, rest = s[: end + 1], s[end + 1:]
        if not rest:
            return host, None
        return (host, rest[1:]) if rest.startswith(":") else None
    if s.count(":") > 1:
        return None  # bare IPv6 is ambiguous with the port separator
    host, sep, port = s.partition(":")
    return host, (port if sep else None)


def _port_ok(port: str | None, low: int = 0) -> bool:
    return port is not None and port.isdigit() and low <= int(port) <= 65535


def _check_listen(v: list[str], shown: Shown) -> list[str]:
    if not v:
        raise _Bad("must list at least one address (proto:host:port)")
    out: list[str] = []
    for item in v:
        proto, sep, rest = item.strip().partition(":")
        if not sep or proto.lower() not in _PROTOS:
            raise _Bad(f"{shown(item)} is not proto:host:port with proto udp, tcp, tls, ws or wss")
        hp = _split_hostport(rest)
        if hp is None:
            raise _Bad(f"{shown(item)} is not proto:host:port (IPv6 hosts go in brackets: "
                       f"udp:[::1]:5060)")
        host, port = hp
        if not host or host == "[]":
            raise _Bad(f"{shown(item)} has no host")
        if not _port_ok(port):
            raise _Bad(f"{shown(item)} has no valid port (expected 0..65535)")
        norm = f"{proto.lower()}:{host}:{int(port)}"  # type: ignore[arg-type]
        if norm in out:
            raise _Bad(f"{shown(item)} is listed twice")
        out.append(norm)
    return out


_DB_HINT = "expected memory, sqlite:///ABSOLUTE/PATH, sqlite://RELATIVE/PATH, postgresql://..., postgres://... or mysql://..."


def _check_db_url(v: str, shown: Shown) -> str:
    s = v.strip()
    if s == "memory":
        return s
    for scheme in ("sqlite://", "postgresql://", "postgres://", "mysql://"):
        if s.startswith(scheme) and len(s) > len(scheme):
            return s
    raise _Bad(f"unsupported database URL {shown(v)} ({_DB_HINT})")


def _check_db_url_or_empty(v: str, shown: Shown) -> str:
    return "" if not v.strip() else _check_db_url(v, shown)


def _check_http_listen(v: str, shown: Shown) -> str:
    s = v.strip()
    if not s:
        return ""
    hp = _split_hostport(s)
    if hp is None or not hp[0] or not _port_ok(hp[1]):
        raise _Bad(f'{shown(v)} is not host:port (use "" to disable the HTTP API)')
    return s


def _check_xcap_servers(v: list[str], shown: Shown) -> list[str]:
    for item in v:
        hp = _split_hostport(item.strip())
        if hp is None or not hp[0] or (hp[1] is not None and not _port_ok(hp[1], 1)):
            raise _Bad(f"{shown(item)} is not host[:port]")
    return [i.strip() for i in v]


def _check_sip_uri_or_empty(v: str, shown: Shown) -> str:
    s = v.strip()
    if s and not s.lower().startswith(("sip:", "sips:")):
        raise _Bad(f"{shown(v)} is not a SIP URI (expected sip:... or sips:...)")
    return s


def _check_table(v: str, shown: Shown) -> str:
    if not _IDENT.match(v):
        raise _Bad(f"{shown(v)} is not a valid table name (letters, digits, _)")
    return v


def _check_order_by(v: str, shown: Shown) -> str:
    if not _ORDER_BY.match(v):
        raise _Bad(f"{shown(v)} is not an ORDER BY list (column names with optional asc/desc)")
    return v.strip()


def _check_subs_reason(v: str, shown: Shown) -> str:
    if not _SUBS_REASON.match(v.strip()):
        raise _Bad(f"{shown(v)} is not a Subscription-State reason (token[;retry-after=N])")
    return v.strip()


def _dedupe(v: list[str], shown: Shown) -> list[str]:
    return list(dict.fromkeys(v))


# ---------------------------------------------------------------------------
# Sections (the schema)

_NA_NOTIFIER = ("only Kamailio's DB-only notifier processes use it; presenced sends "
                "NOTIFYs from its event loop")
_NA_HTABLE = "presenced's in-memory indexes grow as needed; there is no fixed-size hash table"
_NA_DMQ = "presenced does not implement Kamailio's DMQ replication"
_NA_SCRIPT = "it serves Kamailio's routing script; presenced has none"


@dataclass(frozen=True)
class _Section:
    NAME: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""


@dataclass(frozen=True)
class ListenSection(_Section):
    NAME: ClassVar[str] = "listen"
    TITLE: ClassVar[str] = "presenced: SIP sockets."
    addresses: list[str] = _list(
        ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"],
        'SIP sockets, each "proto:host:port" (proto udp, tcp, tls, ws or wss; IPv6 in '
        "brackets; port 0 = any free port).", check=_check_listen)


@dataclass(frozen=True)
class CoreSection(_Section):
    NAME: ClassVar[str] = "core"
    TITLE: ClassVar[str] = "presenced: processes."
    workers: int = _int(1, "Worker processes; presentities are split between them by a hash of "
                           "their URI (1 = one process, no supervisor).", min=1, max=64)
    udp_steering: str = _str("kernel", "With several workers, how UDP datagrams reach them: "
                             '"kernel" = one SO_REUSEPORT socket per worker and a classic BPF '
                             "program that hands each datagram to the worker owning its "
                             "presentity (others are forwarded); \"shared\" = one socket all "
                             "workers read (each datagram wakes every worker).",
                             choices=("kernel", "shared"))
    shutdown_grace_ms: int = _int(2000, "On SIGTERM, how long the server waits for answers to the "
                                        "NOTIFYs still in flight (the final ones included) before it "
                                        "closes its sockets; 0 = not at all.", min=0, max=60000)
    children: int = _int(0, "Kamailio's core name for the number of workers; alias of "
                            "core.workers (higher-precedence source wins, core.workers on a "
                            'tie); 0 = not set.', min=0, max=64)


def _check_ws_path(v: str, shown: Shown) -> str:
    s = v.strip()
    if s and (not s.startswith("/") or any(c in s for c in " \t?#")):
        raise _Bad(f'{shown(v)} is not a URL path (e.g. "/ws"; "" accepts any path)')
    return s


def _check_origins(v: list[str], shown: Shown) -> list[str]:
    out = []
    for item in v:
        s = item.strip().rstrip("/").lower()
        if s != "null" and not re.match(r"^https?://[^/\s]+$", s):
            raise _Bad(f"{shown(item)} is not an origin (scheme://host[:port], e.g. https://phone.example.com)")
        out.append(s)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class TlsSection(_Section):
    NAME: ClassVar[str] = "tls"
    TITLE: ClassVar[str] = ('Kamailio module tls: modparam("tls", "NAME", VALUE) names; used by tls and '
                            "wss listeners and by NOTIFYs that open a TLS connection.")
    certificate: str = _str("", "PEM certificate file (chain: server certificate first, then "
                                "intermediates); required by tls and wss listeners.")
    private_key: str = _str("", "PEM private key file of the certificate (unencrypted).")
    ca_list: str = _str("", 'PEM file of trusted CA certificates: verifies client certificates '
                            "(verify_certificate) and the phone's certificate when presenced opens "
                            'a TLS connection; "" = outgoing TLS is encrypted but not authenticated.')
    verify_certificate: int = _bool(0, "1: ask TLS clients for a certificate and verify it against "
                                       "ca_list when one is presented.")
    require_certificate: int = _bool(0, "1: refuse TLS clients that present no valid certificate "
                                        "(needs ca_list).")
    tls_method: str = _str("TLSv1.2+", "Oldest TLS version accepted, both ways.",
                           choices=("TLSv1.2+", "TLSv1.3+"))


@dataclass(frozen=True)
class WebsocketSection(_Section):
    NAME: ClassVar[str] = "websocket"
    TITLE: ClassVar[str] = "presenced: SIP over WebSocket (RFC 7118) on ws and wss listeners."
    path: str = _str("", 'Only accept WebSocket handshakes for this URL path (e.g. "/ws"); "" = any '
                         "path.", check=_check_ws_path)
    origins: list[str] = _list([], 'Browser origins allowed to connect, e.g. ["https://phone.example.com"]; '
                                   "[] = any (a handshake without Origin is always allowed).",
                               check=_check_origins)


@dataclass(frozen=True)
class DbSection(_Section):
    NAME: ClassVar[str] = "db"
    TITLE: ClassVar[str] = "presenced: database (Kamailio-compatible presence tables)."
    url: str = _str(
        "sqlite://presenced.db",
        "Database URL: memory, sqlite:///ABSOLUTE/PATH (as Kamailio reads it), sqlite://RELATIVE/PATH, "
        "postgresql://..., postgres://... or mysql://...; "
        "presence.db_url is an alias (higher-precedence source wins, db.url on a tie).",
        check=_check_db_url)


@dataclass(frozen=True)
class HttpSection(_Section):
    NAME: ClassVar[str] = "http"
    TITLE: ClassVar[str] = "presenced: HTTP management API."
    listen: str = _str("", 'host:port of the HTTP API; "" disables it.',
                       check=_check_http_listen)
    token: str = _str("", 'Bearer token the HTTP API requires; "" = no authentication '
                          "(warned about when the API is enabled).")


@dataclass(frozen=True)
class AuthSection(_Section):
    NAME: ClassVar[str] = "auth"
    TITLE: ClassVar[str] = "presenced: digest authentication of requests."
    require: list[str] = _list(
        [], "Methods that must carry valid digest credentials; [] = none (Kamailio leaves "
            "this to the routing script).", choices=("PUBLISH", "SUBSCRIBE"), check=_dedupe)
    realm: str = _str("", 'Digest realm in challenges; "" = the domain of the request URI.')
    algorithms: list[str] = _list(
        ["MD5"], "Digest algorithms a 401 offers, one challenge each, most preferred first "
                 "(RFC 8760). MD5 only, as Kamailio: baresip (libre) gives up on a 401 that "
                 "offers any algorithm it lacks, SHA-256 included.",
        choices=("MD5", "SHA-256"), check=_dedupe)


@dataclass(frozen=True)
class RegistrarSection(_Section):
    NAME: ClassVar[str] = "registrar"
    TITLE: ClassVar[str] = "presenced: built-in registrar."
    enabled: int = _bool(1, "1: accept REGISTER and keep contact bindings; 0: no registrar.")
    min_expires: int = _int(60, "Shortest REGISTER expiry granted, in seconds.", min=0)
    max_expires: int = _int(86400, "Longest REGISTER expiry granted, in seconds; longer "
                                   "requests are reduced to it.", min=1)
    default_expires: int = _int(3600, "REGISTER expiry when the request gives none, in "
                                      "seconds.", min=1)


@dataclass(frozen=True)
class LogSection(_Section):
    NAME: ClassVar[str] = "log"
    TITLE: ClassVar[str] = "presenced: logging (to stderr)."
    level: str = _str("info", "Lowest level logged.",
                      choices=("debug", "info", "warning", "error"))
    format: str = _str("console", "console: readable lines; json: one JSON object per line "
                                  "for log collectors.", choices=("console", "json"))


@dataclass(frozen=True)
class PresenceSection(_Section):
    NAME: ClassVar[str] = "presence"
    TITLE: ClassVar[str] = ('Kamailio module presence: modparam("presence", "NAME", VALUE) '
                            "becomes NAME = VALUE here; Kamailio 5.6 defaults.")
    db_url: str = _str(
        "", 'Kamailio\'s name for the database URL; alias of db.url (higher-precedence '
            'source wins, db.url on a tie); "" = not set.', check=_check_db_url_or_empty)
    presentity_table: str = _str("presentity", "Table of publications (one row per ETag).",
                                 check=_check_table)
    active_watchers_table: str = _str("active_watchers", "Table of subscription dialogs.",
                                      check=_check_table)
    watchers_table: str = _str("watchers", "Table of watcher authorisation decisions.",
                               check=_check_table)
    clean_period: int = _int(
        100, "Seconds between sweeps deleting expired publications, stale pending "
             "authorisations and expired subscription rows; 0 disables them.", min=0)
    db_update_period: int = _int(
        100, "Seconds between subscription-timer runs (expire subscriptions, flush "
             "write-back); 0 disables it and subscriptions never time out.", min=0)
    waitn_time: int = _int(5, "Max seconds before a queued change is notified (DB-only "
                              "notifier mode).", na=_NA_NOTIFIER)
    notifier_poll_rate: int = _int(10, "Polls per second of each notifier process.",
                                   na=_NA_NOTIFIER)
    notifier_processes: int = _int(1, "Dedicated NOTIFY-sending processes (only with "
                                      "subs_db_mode=3).", na=_NA_NOTIFIER)
    force_delete: int = _bool(0, "1: delete an expired publication without notifying "
                                 "watchers.")
    startup_mode: int = _int(
        1, "1: skip publications whose expiry has passed when building NOTIFY bodies and "
           "the start-up index; 0: use them until the cleaner removes them.", min=0, max=1)
    expires_offset: int = _int(
        0, "Seconds subtracted from Expires in 200 to PUBLISH; also grace before a "
           "subscription counts as expired.", min=0)
    max_expires: int = _int(3600, "Cap on PUBLISH and SUBSCRIBE Expires; larger requests are "
                                  "silently reduced.", min=1)
    min_expires: int = _int(
        0, "Lowest non-zero SUBSCRIBE and PUBLISH Expires (Kamailio checks SUBSCRIBE only); "
           "below it a PUBLISH gets 423 with Min-Expires and a SUBSCRIBE min_expires_action.", min=0)
    min_expires_action: int = _int(
        1, "SUBSCRIBE below min_expires: 1 reply 423 Interval Too Brief with Min-Expires, "
           "2 raise the expiry to min_expires.", min=1, max=2)
    server_address: str = _str(
        "", 'Contact URI used verbatim in 2xx to SUBSCRIBE and in NOTIFY; "" = built from '
            "the receiving socket.", check=_check_sip_uri_or_empty)
    subs_htable_size: int = _int(9, "Log2 size of the subscription hash table.",
                                 na=_NA_HTABLE)
    pres_htable_size: int = _int(9, "Log2 size of the publication index hash table.",
                                 na=_NA_HTABLE)
    subs_db_mode: int = _int(
        2, "Subscription storage: 0 memory only, 1 write-through, 2 write-back every "
           "db_update_period, 3 database only.", min=0, max=3)
    publ_cache: int = _int(
        1, "Publication storage: 0 database only, 1 database plus in-memory index, "
           "2 memory only.", min=0, max=2)
    enable_sphere_check: int = _bool(
        0, "1: extract the RPID <sphere> from PIDF publications for pres-rules sphere "
           "conditions; re-authorise watchers when it changes.")
    timeout_rm_subs: int = _bool(
        1, "1: delete a subscription whose NOTIFY fails with 408 (404 and 481 always "
           "delete).")
    send_fast_notify: int = _bool(
        1, "1: send the initial NOTIFY right after accepting a SUBSCRIBE; 0 skips it only "
           "for events without a .winfo peer.")
    fetch_rows: int = _int(500, "Rows per page when the start-up restore reads presentity and "
                                "active_watchers.", min=1)
    db_table_lock_type: int = _int(
        1, "1: write-lock tables inside DB-only transactions; other values: no locking.",
        na="presenced relies on its database driver's transactions and takes no table locks")
    local_log_level: int = _int(
        2, "Kamailio log level of the per-NOTIFY log line (-5 alert .. 3 debug, 2 = info), "
           "mapped onto presenced's levels.", min=-5, max=3)
    local_log_facility: str = _str(
        "LOG_DAEMON", "Syslog facility of the per-NOTIFY log line (Kamailio: the core "
                      "log_facility).",
        na="presenced does not log to syslog; logs go to stderr (see log.format)")
    subs_remove_match: int = _int(
        0, "Match of a subscription for deletion: 0 by local To-tag, 1 by Call-ID + "
           "From-tag + To-tag.", min=0, max=1)
    xavp_cfg: str = _str("", "XAVP whose children set publication priority and "
                             "subscription deletion.", na=_NA_SCRIPT)
    retrieve_order: int = _int(
        0, "Publication order when building bodies: 0 by received time, 1 by "
           "retrieve_order_by.", min=0, max=1)
    retrieve_order_by: str = _str(
        "priority", "ORDER BY used when retrieve_order=1 (presentity columns, optional "
                    "asc/desc).", check=_check_order_by)
    sip_uri_match: int = _int(0, "URI comparison: 0 case-sensitive, 1 case-insensitive.",
                              min=0, max=1)
    cseq_offset: int = _int(
        0, "In-dialog SUBSCRIBE is rejected with 400 when CSeq + cseq_offset <= the stored "
           "CSeq.", min=0)
    enable_dmq: int = _bool(0, "1: replicate publications to other nodes over DMQ.",
                            na=_NA_DMQ)
    enable_pres_dmq: int = _bool(1, "Replicate publications over DMQ.", na=_NA_DMQ,
                                 since="6.1")
    enable_pres_sync_dmq: int = _bool(1, "Request a full publication sync when a DMQ peer "
                                         "joins.", na=_NA_DMQ, since="6.1")
    enable_subs_dmq: int = _bool(0, "Replicate subscriptions over DMQ.", na=_NA_DMQ,
                                 since="6.1")
    enable_subs_sync_dmq: int = _bool(1, "Request a full subscription sync when a DMQ peer "
                                         "joins.", na=_NA_DMQ, since="6.1")
    skip_notify_dmq: int = _bool(0, "Send no NOTIFY for publications received over DMQ.",
                                 na=_NA_DMQ, since="6.1")
    default_socket: str = _str("", "Local socket substituted in subscriptions received over "
                                   "DMQ.", na=_NA_DMQ, since="6.1")
    pres_subs_mode: int = _bool(1, "1: keep a copy of the current subscription for the "
                                   "$subs() script variable.", na=_NA_SCRIPT)
    delete_same_subs: int = _bool(
        0, "1: storing a subscription deletes others with the same presentity URI and "
           "Call-ID (no NOTIFY for them).")
    timer_mode: int = _int(1, "Kamailio timer process running the cleaners: 0 main, "
                              "1 secondary.", na="presenced runs its timers in its event loop")
    subs_respond_200: int = _bool(
        1, "1: accept SUBSCRIBE for publish-type events with 200; 0: with 202 (pre-5.6).")
    dmq_peer_id: str = _str("presence", "DMQ peer name.", na=_NA_DMQ, since="master")


@dataclass(frozen=True)
class PresenceXmlSection(_Section):
    NAME: ClassVar[str] = "presence_xml"
    TITLE: ClassVar[str] = ("Kamailio module presence_xml: presence, presence.winfo, "
                            "dialog;sla and xcap-diff events.")
    db_url: str = _str("mysql://kamailio:kamailiorw@localhost/kamailio",
                       "Database holding the xcap table.",
                       na="presenced reads the xcap table from the database in db.url")
    xcap_table: str = _str("xcap", "Table of pres-rules and pidf-manipulation documents.",
                           check=_check_table)
    disable_presence: int = _bool(0, "1: do not offer the presence event.")
    disable_winfo: int = _bool(0, "1: do not offer the presence.winfo event.")
    disable_bla: int = _bool(1, "1: do not offer the dialog;sla (BLA) event; off by default.")
    disable_xcapdiff: int = _bool(0, "1: do not offer the xcap-diff event.")
    force_active: int = _bool(0, "1: every watcher is active; no pres-rules lookup, no "
                                 "transformations.")
    integrated_xcap_server: int = _bool(
        0, "1: pres-rules only from the xcap table; 0: the table first, then HTTP from "
           "xcap_server.")
    xcap_server: list[str] = _list([], "Trusted XCAP servers, host[:port] (port 80 by "
                                       "default), used when integrated_xcap_server=0.",
                                   check=_check_xcap_servers)
    passive_mode: int = _bool(0, "1: offer none of this module's events.")
    no_rules_policy: str = _str(
        "pending", "presenced: what a watcher of a presentity WITHOUT a pres-rules document gets: "
                   "pending (Kamailio), allow, same-domain (allow the presentity's domain, pending "
                   "otherwise) or block.", choices=("pending", "allow", "same-domain", "block"))
    xcapauth_userdel_reason: str = _str(
        "probation", "Subscription-State reason when an allowed watcher no longer matches "
                     "any rule (may add ;retry-after=N).", check=_check_subs_reason)
    force_dummy_presence: int = _bool(0, "1: with no publication, send a PIDF with one "
                                         "closed tuple (0: no body).")
    force_presence_single_body: int = _bool(0, "1: send the highest-priority publication "
                                               "instead of merging all of them.")
    presence_single_body_priorities: str = _str(
        "Available|Ringing|On the Phone", "'|'-separated priorities for "
                                          "force_presence_single_body; later ones win.")
    presence_single_body_lookup_element: str = _str(
        "note", "PIDF element whose text is looked up in presence_single_body_priorities.")
    default_expires: int = _int(3600, "Expiry for PUBLISH/SUBSCRIBE without Expires "
                                      "(all four events).", min=1)


@dataclass(frozen=True)
class PresenceMwiSection(_Section):
    NAME: ClassVar[str] = "presence_mwi"
    TITLE: ClassVar[str] = "Kamailio module presence_mwi: message-summary event."
    default_expires: int = _int(3600, "Expiry for PUBLISH/SUBSCRIBE without Expires.", min=1)


@dataclass(frozen=True)
class PresenceDialoginfoSection(_Section):
    NAME: ClassVar[str] = "presence_dialoginfo"
    TITLE: ClassVar[str] = "Kamailio module presence_dialoginfo: dialog event."
    force_single_dialog: int = _bool(0, "1: put only one <dialog> element in the aggregated "
                                        "body.")
    force_dummy_dialog: int = _bool(0, "1: with no publication, send one terminated "
                                       "dialog (0: a dialog-info without dialogs).")
    default_expires: int = _int(3600, "Expiry for PUBLISH/SUBSCRIBE without Expires.", min=1)


@dataclass(frozen=True)
class PresenceReginfoSection(_Section):
    NAME: ClassVar[str] = "presence_reginfo"
    TITLE: ClassVar[str] = "Kamailio module presence_reginfo: reg event."
    default_expires: int = _int(3761, "Expiry for PUBLISH/SUBSCRIBE without Expires; RFC 3680 "
                                      "§4.4's 3761 (Kamailio's default is 3600).", min=1)
    aggregate_presentities: int = _bool(0, "1: merge all reg publications of an AoR into one "
                                           "reginfo document.", since="5.7")


#: Section classes in display order (presenced's own first, then Kamailio's).
SECTIONS: tuple[type[_Section], ...] = (
    ListenSection, CoreSection, TlsSection, WebsocketSection, DbSection, HttpSection, AuthSection, RegistrarSection, LogSection,
    PresenceSection, PresenceXmlSection, PresenceMwiSection, PresenceDialoginfoSection,
    PresenceReginfoSection,
)


def _build_schema() -> dict[str, dict[str, Param]]:
    schema: dict[str, dict[str, Param]] = {}
    for cls in SECTIONS:
        schema[cls.NAME] = {
            f.name: dataclasses.replace(f.metadata[_META], section=cls.NAME, name=f.name)
            for f in dataclasses.fields(cls)
        }
    return schema


#: section -> param -> Param, in display order.
SCHEMA: dict[str, dict[str, Param]] = _build_schema()
_CLASSES = {cls.NAME: cls for cls in SECTIONS}


# ---------------------------------------------------------------------------
# Rendering values


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    """Render a value as TOML (also how file values are quoted in messages)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return repr(v)


# ---------------------------------------------------------------------------
# Coercion


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_INT_RE = re.compile(r"^[+-]?\d+$")


def _split_list(s: str) -> list[str]:
    return [i.strip() for i in s.split(",") if i.strip()]


def _check(p: Param, v: Any, shown: Shown) -> Any:
    if p.kind == "int":
        if p.min is not None and p.max is not None and not p.min <= v <= p.max:
            raise _Bad(f"{v} is out of range {p.min}..{p.max}")
        if p.min is not None and v < p.min:
            raise _Bad(f"{v} is below the minimum {p.min}")
        if p.max is not None and v > p.max:
            raise _Bad(f"{v} is above the maximum {p.max}")
    if p.choices:
        canon = {c.lower(): c for c in p.choices}
        items = [v] if p.kind == "str" else v
        fixed = []
        for item in items:
            if item.strip().lower() not in canon:
                raise _Bad(f"{shown(item)} is not one of {', '.join(p.choices)}")
            fixed.append(canon[item.strip().lower()])
        v = fixed[0] if p.kind == "str" else fixed
    if p.check is not None:
        v = p.check(v, shown)
    return v


def _coerce(p: Param, v: Any, shown: Shown) -> Any:
    """Validate an already-typed value (from TOML or a CLI flag)."""
    if p.kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {shown(v)}")
    elif p.kind == "bool":
        if isinstance(v, bool):
            v = int(v)
        elif isinstance(v, int) and v in (0, 1):
            pass
        elif isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
            v = 1 if v.strip().lower() in _TRUE else 0  # as --set takes them
        else:
            raise _Bad(f"expected 0 or 1 (or true/false, yes/no, on/off), got {shown(v)}")
    elif p.kind == "str":
        if not isinstance(v, str):
            raise _Bad(f"expected a string, got {shown(v)}")
    else:
        if isinstance(v, str):
            v = _split_list(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v):
            v = [i.strip() for i in v]
        else:
            raise _Bad(f"expected a list of strings, got {shown(v)}")
    return _check(p, v, shown)


def _parse_text(p: Param, raw: str) -> Any:
    """Parse a --set / CLI string into the parameter's type."""
    s = raw.strip()
    if p.kind == "int":
        if not _INT_RE.match(s):
            raise _Bad(f"expected an integer, got {raw!r}")
        v: Any = int(s)
    elif p.kind == "bool":
        if s.lower() in _TRUE:
            v = 1
        elif s.lower() in _FALSE:
            v = 0
        else:
            raise _Bad(f"expected 0 or 1 (or true/false, yes/no, on/off), got {raw!r}")
    elif p.kind == "str":
        v = s
    else:
        if s.startswith("["):  # a TOML array, for items containing commas
            try:
                v = tomllib.loads(f"v = {s}")["v"]
            except tomllib.TOMLDecodeError:
                raise _Bad(f"expected a comma-separated list or a TOML array, got {raw!r}")
            return _coerce(p, v, repr)
        v = _split_list(s)
    return _check(p, v, repr)


def _suggest_section(name: str) -> str:
    m = difflib.get_close_matches(name, list(SCHEMA), n=1, cutoff=0.6)
    return f" (did you mean {m[0]}?)" if m else ""


def _suggest_param(section: str, name: str) -> str:
    # The exact name in another section beats a near miss in this one
    # ([presence] default_expires means presence_xml's, not max_expires).
    elsewhere = [f"{s}.{name}" for s in SCHEMA if name in SCHEMA[s]]
    if len(elsewhere) == 1:
        return f" (did you mean {elsewhere[0]}?)"
    if elsewhere:
        return f" (did you mean one of {', '.join(elsewhere)}?)"
    m = difflib.get_close_matches(name, list(SCHEMA[section]), n=1, cutoff=0.6)
    return f" (did you mean {m[0]}?)" if m else ""


# ---------------------------------------------------------------------------
# Line numbers (tomllib reports none for valid documents)

_HEADER_RE = re.compile(r"^\[(?!\[)\s*(.+?)\s*\]\s*(#.*)?$")
_AOT_RE = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_KEYPART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEYLINE_RE = re.compile(rf"^({_KEYPART}(?:\s*\.\s*{_KEYPART})*)\s*=")
_PART_RE = re.compile(r"""[A-Za-z0-9_-]+|"([^"]*)"|'([^']*)'""")


def _split_key(s: str) -> tuple[str, ...]:
    parts = []
    for m in _PART_RE.finditer(s):
        parts.append(m.group(1) if m.group(1) is not None else
                     m.group(2) if m.group(2) is not None else m.group(0))
    return tuple(parts)


class _Locator:
    """Finds the line of `section.key` by scanning the text table by table."""

    def __init__(self, text: str) -> None:
        self.entries: list[tuple[int, tuple[str, ...], bool, str]] = []
        table: tuple[str, ...] = ()
        in_ml: str | None = None
        for no, line in enumerate(text.splitlines(), 1):
            if in_ml:
                if line.count(in_ml) % 2 == 1:
                    in_ml = None
                continue
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            m = _AOT_RE.match(s) or _HEADER_RE.match(s)
            if m:
                table = _split_key(m.group(1))
                self.entries.append((no, table, True, s))
                continue
            m = _KEYLINE_RE.match(s)
            if m:
                self.entries.append((no, table + _split_key(m.group(1)), False, s))
                rest = s[m.end():]
                for q in ('"""', "'''"):
                    if rest.count(q) % 2 == 1:
                        in_ml = q

    def line(self, section: str, key: str | None = None) -> int | None:
        if key is None:
            for no, path, _, _ in self.entries:
                if path[:1] == (section,):
                    return no
            return None
        for no, path, _, _ in self.entries:
            if path[:2] == (section, key):
                return no
        inline = re.compile(rf"""(?<![\w"'-])["']?{re.escape(key)}["']?\s*=""")
        for no, path, header, s in self.entries:
            if not header and path == (section,) and inline.search(s.partition("=")[2]):
                return no
        return self.line(section)


# ---------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Config:
    """Effective configuration: one attribute per section, plus provenance.

    ``sources[key]`` is one of SOURCES; ``origins[key]`` is more precise
    ('presenced.toml:12', '--set', 'cli', 'default') and used in messages.
    """

    listen: ListenSection = field(default_factory=ListenSection)
    core: CoreSection = field(default_factory=CoreSection)
    tls: TlsSection = field(default_factory=TlsSection)
    websocket: WebsocketSection = field(default_factory=WebsocketSection)
    db: DbSection = field(default_factory=DbSection)
    http: HttpSection = field(default_factory=HttpSection)
    auth: AuthSection = field(default_factory=AuthSection)
    registrar: RegistrarSection = field(default_factory=RegistrarSection)
    log: LogSection = field(default_factory=LogSection)
    presence: PresenceSection = field(default_factory=PresenceSection)
    presence_xml: PresenceXmlSection = field(default_factory=PresenceXmlSection)
    presence_mwi: PresenceMwiSection = field(default_factory=PresenceMwiSection)
    presence_dialoginfo: PresenceDialoginfoSection = field(
        default_factory=PresenceDialoginfoSection)
    presence_reginfo: PresenceReginfoSection = field(default_factory=PresenceReginfoSection)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sec, params in SCHEMA.items():
            for name in params:
                self.sources.setdefault(f"{sec}.{name}", "default")
                self.origins.setdefault(f"{sec}.{name}", "default")

    def get(self, key: str) -> Any:
        """Value of 'section.param' (for code that works from key strings)."""
        sec, _, name = key.partition(".")
        if sec not in SCHEMA or name not in SCHEMA[sec]:
            raise KeyError(key)
        return getattr(getattr(self, sec), name)

    def as_dict(self, redact: bool = False) -> dict[str, dict[str, Any]]:
        """{section: {param: value}}; redact=True hides passwords and tokens."""
        out: dict[str, dict[str, Any]] = {}
        for sec, params in SCHEMA.items():
            out[sec] = {}
            for name, p in params.items():
                v = self.get(p.key)
                out[sec][name] = _redact(p.key, v) if redact else (
                    list(v) if isinstance(v, list) else v)
        return out

    def show(self, redact: bool = True) -> str:
        """Effective values as TOML, each annotated with where it came from."""
        lines = ["# presenced effective configuration: value  # source"]
        lines += [f"# warning: {w}" for w in self.warnings]
        for sec, params in SCHEMA.items():
            rows = []
            for name, p in params.items():
                v = self.get(p.key)
                shown = _redact(p.key, v) if redact else v
                note = self.origins[p.key]
                if note != "default" and self.sources[p.key] == "file":
                    note = f"file {note}"
                if not p.applicable:
                    note += "; not applicable, ignored"
                rows.append((f"{name} = {_toml_value(shown)}", note))
            width = max(len(r[0]) for r in rows)
            lines += ["", f"[{sec}]"] + [f"{a.ljust(width)}  # {b}" for a, b in rows]
        return "\n".join(lines) + "\n"


_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)([^@]*)(@)", re.I)


def _redact(key: str, v: Any) -> Any:
    if key == "http.token" and v:
        return "***"
    if key.endswith("db_url") or key == "db.url":
        return _URL_PASSWORD.sub(r"\1***\3", v)
    return list(v) if isinstance(v, list) else v


class _Layers:
    """Accumulates values and provenance while the sources are applied in order."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.origins: dict[str, str] = {}
        self.invalid_na: dict[str, str] = {}
        for params in SCHEMA.values():
            for p in params.values():
                self.values[p.key] = list(p.default) if p.kind == "list" else p.default
                self.sources[p.key] = self.origins[p.key] = "default"

    def apply(self, p: Param, make: Callable[[], Any], prefix: str, source: str,
              origin: str) -> None:
        try:
            value = make()
        except _Bad as e:
            if p.applicable:
                raise ConfigError(f"{prefix}{p.key}: {e}", key=p.key) from None
            # Not applicable: never an error, but say the value was bad too.
            self.invalid_na[p.key] = str(e)
            value = self.values[p.key]
        else:
            self.invalid_na.pop(p.key, None)
        self.values[p.key] = value
        self.sources[p.key] = source
        self.origins[p.key] = origin


def _apply_file(layers: _Layers, path: str | Path) -> None:
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: invalid TOML: {e}") from None
    loc = _Locator(text)

    def where(line: int | None) -> str:
        return f"{name}:{line}" if line else name

    for sec, body in data.items():
        if sec not in SCHEMA:
            raise ConfigError(f"{where(loc.line(sec))}: unknown section "
                              f"'{sec}'{_suggest_section(sec)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where(loc.line(sec))}: '{sec}' must be a table ([{sec}]), "
                              f"got {_toml_value(body)}")
        for key, val in body.items():
            origin = where(loc.line(sec, key))
            p = SCHEMA[sec].get(key)
            if p is None:
                raise ConfigError(f"{origin}: unknown parameter "
                                  f"'{sec}.{key}'{_suggest_param(sec, key)}",
                                  key=f"{sec}.{key}")
            layers.apply(p, lambda p=p, val=val: _coerce(p, val, _toml_value),
                         f"{origin}: ", "file", origin)


def _lookup(sec: str, name: str, context: str, key: str) -> Param:
    if sec not in SCHEMA:
        raise ConfigError(f"unknown section '{sec}' {context}{_suggest_section(sec)}", key=key)
    p = SCHEMA[sec].get(name)
    if p is None:
        raise ConfigError(f"unknown parameter '{key}'{_suggest_param(sec, name)}", key=key)
    return p


def _apply_set(layers: _Layers, item: str) -> None:
    key, eq, raw = item.partition("=")
    key = key.strip()
    sec, dot, name = key.partition(".")
    if not eq or not dot or not sec or not name:
        raise ConfigError(f"invalid --set {item!r}: expected SECTION.PARAM=VALUE")
    p = _lookup(sec, name, f"in --set {item}", key)
    layers.apply(p, lambda: _parse_text(p, raw), "", "--set", "--set")


def _apply_override(layers: _Layers, key: str, value: Any) -> None:
    sec, _, name = key.partition(".")
    p = _lookup(sec, name, f"in command-line override {key}", key)
    if isinstance(value, str):
        layers.apply(p, lambda: _parse_text(p, value), "", "cli", "cli")
    else:
        layers.apply(p, lambda: _coerce(p, value, repr), "", "cli", "cli")


def _resolve_alias(layers: _Layers, warnings: list[str], alias: str, main: str) -> None:
    """Fold a Kamailio name into presenced's (presence.db_url → db.url,
    core.children → core.workers; see the module docstring)."""
    if layers.sources[alias] == "default" or not layers.values[alias]:
        return
    ra, rm = _RANK[layers.sources[alias]], _RANK[layers.sources[main]]
    if ra > rm:
        layers.values[main] = layers.values[alias]
        layers.sources[main] = layers.sources[alias]
        layers.origins[main] = f"{layers.origins[alias]} (via {alias})"
    elif ra == rm and layers.values[alias] != layers.values[main]:
        warnings.append(
            f"{layers.origins[alias]}: {alias} is overridden by {main} "
            f"({layers.origins[main]}); set only one of them")


def _ref(cfg: Config, key: str) -> str:
    return f"{key} = {_toml_value(cfg.get(key))} ({cfg.origins[key]})"


def _cross_check(cfg: Config) -> None:
    """Checks that involve several parameters; errors raise, the rest warn."""
    pr, rg = cfg.presence, cfg.registrar
    if pr.min_expires > pr.max_expires:
        raise ConfigError(f"{_ref(cfg, 'presence.min_expires')} is greater than "
                          f"{_ref(cfg, 'presence.max_expires')}", key="presence.min_expires")
    if rg.min_expires > rg.max_expires:
        raise ConfigError(f"{_ref(cfg, 'registrar.min_expires')} is greater than "
                          f"{_ref(cfg, 'registrar.max_expires')}", key="registrar.min_expires")
    if rg.default_expires < rg.min_expires:
        raise ConfigError(f"{_ref(cfg, 'registrar.default_expires')} is below "
                          f"{_ref(cfg, 'registrar.min_expires')}",
                          key="registrar.default_expires")
    if rg.default_expires > rg.max_expires:
        raise ConfigError(f"{_ref(cfg, 'registrar.default_expires')} is above "
                          f"{_ref(cfg, 'registrar.max_expires')}",
                          key="registrar.default_expires")

    _check_tls_files(cfg)

    w = cfg.warnings
    if pr.db_update_period == 0:
        w.append(f"{_ref(cfg, 'presence.db_update_period')}: subscriptions will never "
                 f"expire on their own")
    if pr.clean_period == 0:
        w.append(f"{_ref(cfg, 'presence.clean_period')}: expired publications will never "
                 f"be removed")
    if pr.startup_mode == 0:
        w.append(f"{_ref(cfg, 'presence.startup_mode')}: presenced always behaves as with 1 "
                 f"(every publication has its own expiry timer, so an expired one is never "
                 f"served, at start-up or later)")
    if pr.expires_offset and pr.expires_offset >= pr.max_expires:
        w.append(f"{_ref(cfg, 'presence.expires_offset')} is not below "
                 f"{_ref(cfg, 'presence.max_expires')}: PUBLISH replies would carry "
                 f"Expires <= 0")
    for sec in ("presence_xml", "presence_mwi", "presence_dialoginfo", "presence_reginfo"):
        key = f"{sec}.default_expires"
        # reg's own default (RFC 3680's 3761) above the default max is expected
        if cfg.get(key) > pr.max_expires and cfg.get(key) != SCHEMA[sec]["default_expires"].default:
            w.append(f"{_ref(cfg, key)} exceeds {_ref(cfg, 'presence.max_expires')}: requests "
                     f"without Expires get {cfg.get(key)} s, longer than a watcher may ask for")
    if cfg.http.listen and not cfg.http.token:
        w.append(f"{_ref(cfg, 'http.listen')} is enabled without http.token: the HTTP API "
                 f"accepts unauthenticated requests")


def _check_tls_files(cfg: Config) -> None:
    """Certificate files that are set exist and are readable. Whether a tls/wss
    listener has them, and their contents, the server checks when it builds
    its TLS context (presenced.transport.tls), also with a field name."""
    tls = cfg.tls
    for key in ("tls.certificate", "tls.private_key", "tls.ca_list"):
        path = cfg.get(key)
        if not path:
            continue
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{_ref(cfg, key)}: no such file", key=key)
        try:
            with p.open("rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{_ref(cfg, key)}: cannot read: {e.strerror or e}", key=key) from None
    if (tls.verify_certificate or tls.require_certificate) and not tls.ca_list:
        key = "tls.require_certificate" if tls.require_certificate else "tls.verify_certificate"
        raise ConfigError(f"{_ref(cfg, key)} needs tls.ca_list (the CAs client certificates are "
                          f"checked against)", key=key)


def load_config(path: str | Path | None, sets: Iterable[str] = (),
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load the effective configuration.

    Layers, each overriding the previous: Kamailio defaults, the TOML file at
    ``path`` (if any), ``sets`` ("SECTION.PARAM=VALUE" strings from --set),
    ``overrides`` ({"section.param": value} from dedicated CLI flags; None
    values are skipped, so unset click options can be passed straight in;
    strings are parsed like --set, other values validated as typed).
    Raises ConfigError with a one-line message.
    """
    layers = _Layers()
    if path is not None:
        _apply_file(layers, path)
    for item in sets:
        _apply_set(layers, item)
    for key, value in (overrides or {}).items():
        if value is not None:
            _apply_override(layers, key, value)

    warnings: list[str] = []
    for params in SCHEMA.values():
        for p in params.values():
            if not p.applicable and layers.sources[p.key] != "default":
                msg = (f"{layers.origins[p.key]}: {p.key} is not applicable to presenced "
                       f"({p.not_applicable}); ignored")
                if p.key in layers.invalid_na:
                    msg += f" (its value is invalid anyway: {layers.invalid_na[p.key]})"
                warnings.append(msg)
    _resolve_alias(layers, warnings, "presence.db_url", "db.url")
    _resolve_alias(layers, warnings, "core.children", "core.workers")

    sections = {
        sec: _CLASSES[sec](**{n: layers.values[f"{sec}.{n}"] for n in params})
        for sec, params in SCHEMA.items()
    }
    cfg = Config(**sections, warnings=warnings, sources=layers.sources,  # type: ignore[arg-type]
                 origins=layers.origins)
    _cross_check(cfg)
    return cfg


# ---------------------------------------------------------------------------
# Example file


def example_toml() -> str:
    """The documented example config (docs/example-config.toml), from the schema.

    Every parameter is present but commented out with its default, so the file
    loads to the defaults; uncommenting a line is how an operator changes it.
    """
    out = [
        "# presenced example configuration: every parameter with its default.",
        "# Generated by presenced.config.example_toml(); do not edit by hand.",
        "#",
        "# Kamailio module sections ([presence], [presence_xml], ...) take Kamailio's",
        '# modparam names and defaults: modparam("presence", "min_expires", 10) becomes',
        "# min_expires = 10 under [presence]. Flags are 0/1 as in Kamailio (true/false",
        "# also accepted). Kamailio parameters presenced does not use are accepted and",
        "# ignored with a warning.",
        "#",
        "# Precedence: this file < --set SECTION.PARAM=VALUE < dedicated command-line",
        "# flags (--listen, --db-url, --log-level, ...). presence.db_url is an alias of",
        "# db.url: the one from the higher-precedence source wins, db.url on a tie.",
    ]
    for cls in SECTIONS:
        out += ["", f"[{cls.NAME}]", f"# {cls.TITLE}"]
        for p in SCHEMA[cls.NAME].values():
            out.append("")
            out.append(f"# {p.doc}")
            if not p.applicable:
                out.append(f"# Not applicable to presenced: {p.not_applicable}.")
            meta = p.describe()
            if p.since:
                meta += f"; Kamailio {p.since}+" if p.since != "master" else \
                    "; Kamailio master only"
            out.append(f"#{p.name} = {_toml_value(p.default)}  # {meta}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m presenced.config > docs/example-config.toml
    sys.stdout.write(example_toml())
