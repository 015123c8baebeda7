"""Admin commands that work on the database directly: `presenced rules ...`.

pres-rules live in Kamailio's `xcap` table (doc_type 2), so a document put
here is also what Kamailio's presence_xml would read, and vice versa. A
running server picks a change up on `presence.updateWatchers`.
"""

from __future__ import annotations

import asyncio
import secrets
import sys

import click


def _fail(msg: str) -> None:
    click.echo(f"presenced: {msg}", err=True)
    sys.exit(2)


def _store_from(db_url: str | None, config_file: str | None, sets: tuple[str, ...]):
    from presenced.config import ConfigError, load_config
    from presenced.storage import Store

    try:
        cfg = load_config(config_file, list(sets), {"db.url": db_url} if db_url else None)
    except ConfigError as e:
        _fail(str(e))
    if cfg.db.url == "memory":
        _fail("rules need a database: give --db-url or a config file with db.url")
    return Store.from_url(cfg.db.url, tables={"xcap": cfg.presence_xml.xcap_table})


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
