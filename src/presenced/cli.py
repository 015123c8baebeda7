"""Command line: `presenced serve|db|config ...`.

Configuration mistakes exit with status 2 and one line naming the field, so
a wrapper script or a unit file fails loudly and readably.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from presenced import __version__, _build


def _fail(msg: str) -> None:
    click.echo(f"presenced: {msg}", err=True)
    sys.exit(2)


def _load(config_file, listen, db_url, sets, log_level, http_listen=None, workers=None):
    from presenced.config import ConfigError

    try:
        return _reload(config_file, listen, db_url, sets, log_level, http_listen, workers)
    except ConfigError as e:
        _fail(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="presenced", message=f"%(prog)s %(version)s (hot path: {_build.MODE})")
def main() -> None:
    """presenced — a SIP presence server (PUBLISH, SUBSCRIBE/NOTIFY)."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--listen", multiple=True, metavar="PROTO:HOST:PORT", help="Listen address (repeatable); udp, tcp, tls, ws or wss.")
@click.option("--db-url", metavar="URL", help="memory, sqlite:///path, postgresql://..., mysql://...")
@click.option("--set", "sets", multiple=True, metavar="SECTION.PARAM=VALUE", help="Override a parameter (Kamailio names).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--route", "route_spec", metavar="MODULE:FUNCTION", help="Python routing hook called for each request.")
@click.option("--http", "http_listen", metavar="HOST:PORT", help="Management API (JSON-RPC /RPC, /metrics, /health).")
@click.option("--workers", type=int, metavar="N", help="Worker processes, 1..64 (core.workers; default 1).")
def serve(config_file, listen, db_url, sets, log_level, route_spec, http_listen, workers) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    cfg = _load(config_file, listen, db_url, sets, log_level, http_listen, workers)
    from presenced.logsetup import setup_logging

    setup_logging(str(cfg.log.level), str(getattr(cfg.log, "format", "console")))
    log = logging.getLogger("presenced")
    for w in cfg.warnings:
        log.warning("%s", w)
    _claim_sqlite(cfg, log)
    from presenced.runtime.server import Server, install_uvloop

    def reload():
        return _reload(config_file, listen, db_url, sets, log_level, http_listen, workers)

    def setup(server):
        server.reload_config = reload
        if route_spec:
            from presenced.api.presence import install_route, load_route

            install_route(server.core, load_route(route_spec))
            # Kamailio's event_route[presence:notify-reply]: an optional
            # `notify_reply(subscription, response)` next to the route function;
            # returning True deletes the subscription.
            hook = getattr(sys.modules.get(route_spec.partition(":")[0]), "notify_reply", None)
            if callable(hook):
                server.core.engine.notify_reply_hook = hook
        return server

    if cfg.core.workers > 1:
        sys.exit(_serve_workers(cfg, setup))
    install_uvloop()
    try:
        server = setup(Server(cfg, list(cfg.listen.addresses)))
    except ValueError as e:
        _fail(str(e))
    from presenced.storage.base import StoreError

    try:
        asyncio.run(server.serve_forever())
    except StoreError as e:
        _fail(f"storage: {e}")
    except OSError as e:
        _fail(f"cannot listen: {e}")
    except KeyboardInterrupt:
        pass
    sys.exit(0)


_CLAIMS: list[int] = []  # lock descriptors held for the life of the process


def _claim_sqlite(cfg, log: logging.Logger) -> None:
    """Warn when another presenced already keeps state in memory from the same
    SQLite file: both would overwrite each other's rows. DB-only servers may
    share a file (docs/operations.md)."""
    url = str(cfg.db.url)
    if not url.lower().startswith("sqlite://"):
        return
    from presenced.storage.sqlite import claim_file, sqlite_path

    path = sqlite_path(url)
    if path == ":memory:":
        return
    db_only = int(cfg.presence.publ_cache) == 0 and int(cfg.presence.subs_db_mode) in (0, 3)
    try:
        fd = claim_file(path, exclusive=not db_only)
    except OSError:
        return  # the store itself says why the path is unusable
    if fd is None:
        log.warning(
            "another presenced process is using %s; unless every server on it runs DB-only "
            "(presence.subs_db_mode=3, presence.publ_cache=0) they overwrite each other's rows: "
            "give each server its own file", path)
        return
    _CLAIMS.append(fd)


def _serve_workers(cfg, setup) -> int:
    """`serve` with core.workers > 1: check what one worker would refuse, bind,
    then supervise the worker processes (runtime/workers.py)."""
    from presenced.runtime.server import Server
    from presenced.runtime.supervisor import Supervisor
    from presenced.runtime.workers import WorkerServer

    addresses = list(cfg.listen.addresses)
    try:
        setup(Server(cfg, addresses))  # configuration errors once, before any fork
    except ValueError as e:
        _fail(str(e))

    def build(index, sockets, links, ready_fd):
        return setup(WorkerServer(cfg, addresses, index=index, workers=cfg.core.workers, sockets=sockets,
                                  links=links, ready_fd=ready_fd))

    sup = Supervisor(cfg, addresses, cfg.core.workers, build)
    try:
        sup.bind()
    except OSError as e:
        _fail(f"cannot listen: {e}")
    return sup.run()


def _reload(config_file, listen, db_url, sets, log_level, http_listen=None, workers=None):
    """Load the configuration; raises ConfigError (SIGHUP must not exit a running server)."""
    from presenced.config import load_config

    overrides: dict[str, object] = {}
    if workers is not None:
        overrides["core.workers"] = workers
    if listen:
        overrides["listen.addresses"] = list(listen)
    if db_url:
        overrides["db.url"] = db_url
    if log_level:
        overrides["log.level"] = log_level.lower()
    if http_listen:
        overrides["http.listen"] = http_listen
    return load_config(config_file, list(sets), overrides)


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
    return url


def _store_tables(cfg) -> dict[str, str]:
    p = cfg.presence
    return {
        "presentity": p.presentity_table, "active_watchers": p.active_watchers_table,
        "watchers": p.watchers_table, "xcap": cfg.presence_xml.xcap_table,
    }


@main.group()
def db() -> None:
    """Database tools (Kamailio-compatible presence tables)."""


@db.command("init")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--db-url", metavar="URL", help="sqlite:///path, postgresql://..., mysql://... (default: db.url).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.PARAM=VALUE", help="Override a parameter (table names...).")
def db_init(config_file, db_url, sets) -> None:
    """Create the missing tables (and their `version` rows); existing ones are checked, never altered."""
    cfg = _load(config_file, (), db_url, sets, None)
    url = cfg.db.url
    from presenced.storage import Store, StoreError, redact_url
    from presenced.storage.schema import ALL_TABLES, KAMAILIO_TABLES

    if url == "memory" or url.startswith("memory:"):
        click.echo("memory: nothing to create (state is kept in memory only)")
        return
    try:
        store = Store.from_url(url, tables=_store_tables(cfg))
    except ValueError as e:
        _fail(str(e))

    async def run() -> list[tuple[str, str, bool]]:
        await store.connect()
        try:
            keys = ("version", *(t.key for t in KAMAILIO_TABLES), "ext")
            before = {k: await store._table_exists(store.names[k]) for k in keys}
            await store.ensure_schema()
            return [(k, store.names[k], before[k]) for k in keys]
        finally:
            await store.close()

    try:
        done = asyncio.run(run())
    except StoreError as e:
        _fail(f"storage: {e}")
    except Exception as e:  # driver errors not wrapped by the store
        reason = store._reason(e) if hasattr(store, "_reason") else str(e)
        _fail(f"storage: {redact_url(url)}: {reason}")
    created = 0
    for key, name, existed in done:
        version = ALL_TABLES[key].version
        v = f" (version {version})" if version is not None else ""
        if existed:
            click.echo(f"{name}: exists{v}")
        else:
            created += 1
            click.echo(f"{name}: created{v}")
    click.echo(f"{store.url}: {created} table(s) created, {len(done) - created} already present")


@main.group()
def config() -> None:
    """Check or show configuration."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file) -> None:
    """Validate FILE; exit 2 with the offending field on error."""
    cfg = _load(file, (), None, (), None)
    for w in cfg.warnings:
        click.echo(f"warning: {w}", err=True)
    # what `serve` checks before it binds: the TLS files a tls/wss listener needs
    from presenced.runtime.server import parse_listen
    from presenced.transport.tls import client_context, server_context

    try:
        if {parse_listen(a)[0] for a in cfg.listen.addresses} & {"tls", "wss"}:
            server_context(cfg.tls)
        client_context(cfg.tls)
    except ValueError as e:
        _fail(str(e))
    click.echo(f"{file}: OK")


@config.command("show")
@click.option("--config", "config_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True)
def config_show(config_file, sets) -> None:
    """Print effective values and where each came from."""
    cfg = _load(config_file, (), None, sets, None)
    click.echo(cfg.show())


def _register_subcommands() -> None:
    from presenced.cli_admin import rules, user

    main.add_command(rules)
    main.add_command(user)
    try:
        from presenced.cli_rpc import rpc
    except ImportError:  # pragma: no cover - management API not installed
        return
    main.add_command(rpc)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
