"""Admin commands that work on the database directly: `presenced rules ...`, `presenced user ...`.

pres-rules live in Kamailio's `xcap` table (doc_type 2), so a document put
here is also what Kamailio's presence_xml would read, and vice versa. A
running server picks a change up on `presence.updateWatchers`.

Users live in Kamailio's auth_db `subscriber` table, written the way kamctl
writes it (clear-text password plus ha1 and ha1b with realm = domain), so
Kamailio and presenced authenticate the same users.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import sys

import click


def _fail(msg: str) -> None:
    click.echo(f"presenced: {msg}", err=True)
    sys.exit(2)


# Kamailio's auth_db reads credentials from `subscriber` (the table named in
# auth_check()/www_authorize()); there is no configuration key for it yet.
SUBSCRIBER_TABLE = "subscriber"


def _store_from(db_url: str | None, config_file: str | None, sets: tuple[str, ...], what: str = "rules"):
    from presenced.config import ConfigError, load_config
    from presenced.storage import Store

    try:
        cfg = load_config(config_file, list(sets), {"db.url": db_url} if db_url else None)
    except ConfigError as e:
        _fail(str(e))
    if cfg.db.url == "memory":
        _fail(f"{what} need a database: give --db-url or a config file with db.url")
    tables = {"xcap": cfg.presence_xml.xcap_table, "subscriber": SUBSCRIBER_TABLE}
    return Store.from_url(cfg.db.url, tables=tables)


def _aor(uri: str) -> tuple[str, str, str]:
    from presenced.sip.errors import SipParseError
    from presenced.sip.uri import parse_uri

    try:
        u = parse_uri(uri)
    except SipParseError as e:
        _fail(f"{uri}: not a SIP URI ({e.reason})")
    if u.scheme not in ("sip", "sips", "pres") or not u.user:
        _fail(f"{uri}: expected sip:user@domain")
    return u.user, u.host.lower(), f"sip:{u.user}@{u.host.lower()}"


async def _with_store(store, fn):
    from presenced.storage.base import StoreError

    try:
        await store.connect()
        try:
            await store.ensure_schema()
            return await fn(store)
        finally:
            await store.close()
    except StoreError as e:
        _fail(f"storage: {e}")


_db_options = [
    click.option("--db-url", metavar="URL", help="Database URL (memory is not allowed here)."),
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config with db.url."),
    click.option("--set", "sets", multiple=True, metavar="SECTION.PARAM=VALUE"),
]


def db_options(f):
    for opt in reversed(_db_options):
        f = opt(f)
    return f


@click.group()
def rules() -> None:
    """Manage pres-rules documents (RFC 5025) in the xcap table."""


@rules.command("put")
@click.argument("uri")
@click.argument("file", type=click.File("rb"), default="-")
@db_options
def rules_put(uri, file, db_url, config_file, sets) -> None:
    """Store FILE (or stdin) as URI's pres-rules, replacing the previous one."""
    from presenced.core.authorization import PRES_RULES
    from presenced.policy import RulesError, parse_rules
    from presenced.storage.rows import XcapRow

    doc = file.read()
    try:
        parse_rules(doc)
    except RulesError as e:
        _fail(f"{getattr(file, 'name', 'stdin')}: invalid pres-rules: {e}")
    user, domain, aor = _aor(uri)
    store = _store_from(db_url, config_file, sets)
    doc_uri = f"/xcap-root/pres-rules/users/{aor}/index"

    async def put(s):
        await s.delete_xcap(user, domain, PRES_RULES)
        await s.put_xcap(XcapRow(user, domain, doc, PRES_RULES, secrets.token_hex(8), 1, doc_uri, 0))

    asyncio.run(_with_store(store, put))
    click.echo(f"pres-rules of {aor} stored ({len(doc)} bytes); run `presenced rpc presence.updateWatchers {aor} presence` to apply them to a running server")


@rules.command("get")
@click.argument("uri")
@db_options
def rules_get(uri, db_url, config_file, sets) -> None:
    """Print URI's pres-rules document."""
    from presenced.core.authorization import PRES_RULES

    user, domain, aor = _aor(uri)
    store = _store_from(db_url, config_file, sets)
    row = asyncio.run(_with_store(store, lambda s: s.get_xcap(user, domain, PRES_RULES)))
    if row is None:
        click.echo(f"presenced: {aor} has no pres-rules", err=True)
        sys.exit(1)
    sys.stdout.buffer.write(bytes(row.doc))
    if not bytes(row.doc).endswith(b"\n"):
        sys.stdout.write("\n")


@rules.command("delete")
@click.argument("uri")
@db_options
def rules_delete(uri, db_url, config_file, sets) -> None:
    """Remove URI's pres-rules document."""
    from presenced.core.authorization import PRES_RULES

    user, domain, aor = _aor(uri)
    store = _store_from(db_url, config_file, sets)
    n = asyncio.run(_with_store(store, lambda s: s.delete_xcap(user, domain, PRES_RULES)))
    click.echo(f"deleted {n} pres-rules document(s) of {aor}")


# --- users (Kamailio's auth_db `subscriber` table) -------------------------------------

# RFC 3261 user: unreserved / escaped / user-unreserved characters
_SIP_USER = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+$")
_DOMAIN = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")
_MAX_FIELD = 64  # username, domain and password are VARCHAR(64) in Kamailio's schema


def _account(arg: str) -> tuple[str, str]:
    """USER@DOMAIN (a sip: or sips: prefix is allowed) as (user, lower-cased domain)."""
    text = arg
    for prefix in ("sip:", "sips:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    user, at, domain = text.partition("@")
    if not at or not user or not domain or "@" in domain:
        _fail(f"{arg!r}: expected USER@DOMAIN")
    if not _SIP_USER.match(user):
        _fail(f"{arg!r}: {user!r} is not a valid SIP user name")
    if not _DOMAIN.match(domain):
        _fail(f"{arg!r}: {domain!r} is not a valid domain")
    if len(user) > _MAX_FIELD or len(domain) > _MAX_FIELD:
        _fail(f"{arg!r}: user and domain are limited to {_MAX_FIELD} characters each")
    return user, domain.lower()


def _password(password: str | None) -> str:
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        _fail("the password must not be empty")
    if len(password) > _MAX_FIELD:
        _fail(f"the password is limited to {_MAX_FIELD} characters")
    return password


def subscriber_row(user: str, domain: str, password: str):
    """The `subscriber` row kamctl would write: realm = domain,
    ha1 = MD5(user:realm:password), ha1b = MD5(user@domain:realm:password)."""
    from presenced.storage.rows import SubscriberRow

    def md5(text: str) -> str:
        return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()

    return SubscriberRow(
        user, domain, password, md5(f"{user}:{domain}:{password}"), md5(f"{user}@{domain}:{domain}:{password}")
    )


def _refuse(msg: str) -> None:
    click.echo(f"presenced: {msg}", err=True)
    sys.exit(1)


def _exists(store, user: str, domain: str) -> bool:
    async def get(s):
        return await s.get_subscriber(user, domain) is not None

    return bool(asyncio.run(_with_store(store, get)))


@click.group()
def user() -> None:
    """Manage digest credentials in Kamailio's subscriber table."""


@user.command("add")
@click.argument("account", metavar="USER@DOMAIN")
@click.argument("password", required=False)
@db_options
def user_add(account, password, db_url, config_file, sets) -> None:
    """Add USER@DOMAIN with PASSWORD (prompted for when omitted).

    Like kamctl, stores the password and its ha1/ha1b hashes with the domain as realm.
    """
    name, domain = _account(account)
    store = _store_from(db_url, config_file, sets, "user commands")
    if _exists(store, name, domain):
        _refuse(f"{name}@{domain} already exists; use `presenced user passwd {name}@{domain}` to change its password")
    row = subscriber_row(name, domain, _password(password))
    asyncio.run(_with_store(store, lambda s: s.put_subscriber(row)))
    click.echo(f"added {name}@{domain}")


@user.command("passwd")
@click.argument("account", metavar="USER@DOMAIN")
@click.argument("password", required=False)
@db_options
def user_passwd(account, password, db_url, config_file, sets) -> None:
    """Set USER@DOMAIN's PASSWORD (prompted for when omitted)."""
    name, domain = _account(account)
    store = _store_from(db_url, config_file, sets, "user commands")
    if not _exists(store, name, domain):
        _refuse(f"{name}@{domain}: no such user; use `presenced user add {name}@{domain}` to create it")
    row = subscriber_row(name, domain, _password(password))
    asyncio.run(_with_store(store, lambda s: s.put_subscriber(row)))
    click.echo(f"password of {name}@{domain} changed")


@user.command("remove")
@click.argument("account", metavar="USER@DOMAIN")
@db_options
def user_remove(account, db_url, config_file, sets) -> None:
    """Remove USER@DOMAIN."""
    name, domain = _account(account)
    store = _store_from(db_url, config_file, sets, "user commands")
    n = asyncio.run(_with_store(store, lambda s: s.delete_subscriber(name, domain)))
    if not n:
        _refuse(f"{name}@{domain}: no such user")
    click.echo(f"removed {name}@{domain}")
