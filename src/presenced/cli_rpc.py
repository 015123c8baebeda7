"""`presenced rpc`: call the management API's JSON-RPC methods.

    presenced rpc [--url URL] [--token T] [--json] METHOD [PARAM...]

Parameters that look like integers are sent as numbers (like kamcmd); prefix
one with `s:` to send it as a string anyway (`s:1000`). Results print as
tables for people, or as JSON with `--json`. Exit status: 0 on success, 1 when
the server cannot be reached, rejects the token or returns an RPC error,
2 on usage errors.

Where to connect, first found wins: --url, $PRESENCED_RPC_URL, the
http.listen of --config FILE, http://127.0.0.1:8080. The token: --token,
$PRESENCED_RPC_TOKEN, the http.token of --config FILE (prefer the last two:
a --token argument is visible in the process list).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import click

DEFAULT_URL = "http://127.0.0.1:8080"
TABLE_MAX_CELL = 60     # wider values switch a table to one block per record
TABLE_MAX_COLUMNS = 8


def normalize_url(url: str) -> str:
    """'127.0.0.1:8080' / 'http://h:p' / 'http://h:p/RPC' → the /RPC endpoint URL."""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    scheme, rest = u.split("://", 1)
    host, slash, path = rest.partition("/")
    if not path:
        path = "RPC"
    return f"{scheme}://{host}/{path}"


def typed_param(text: str) -> Any:
    if text.startswith("s:"):
        return text[2:]
    body = text[1:] if text.startswith("-") else text
    if body.isdigit() and body.isascii():
        return int(text)
    return text


def call(url: str, method: str, params: list[Any], token: str | None = None, timeout: float = 10.0) -> Any:
    """POST one JSON-RPC request; returns the result or raises RpcCallError / ConnectError."""
    payload = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
    _check_url(url)
    req = urllib.request.Request(url, data=payload, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace").strip()
        if e.code == 401:
            raise ConnectError(f"{url}: unauthorized (HTTP 401): give the right --token or $PRESENCED_RPC_TOKEN") from None
        raise ConnectError(f"{url}: HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as e:
        raise ConnectError(f"cannot reach {url}: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise ConnectError(f"cannot reach {url}: {e}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConnectError(f"{url}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ConnectError(f"{url}: unexpected answer {raw[:200]!r}")
    if "error" in doc:
        err = doc["error"] or {}
        raise RpcCallError(err.get("code"), err.get("message", ""), err.get("data"))
    return doc.get("result")


class ConnectError(Exception):
    pass


def _check_url(url: str) -> None:
    """--url must be an http(s) URL with a host and a valid port: say so, not a traceback."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as e:
        raise ConnectError(f"--url {url!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"--url {url!r} is not an http:// or https:// URL with a host "
                           "(e.g. http://127.0.0.1:8080/RPC)")
    if port == 0:
        raise ConnectError(f"--url {url!r}: port 0")


class RpcCallError(Exception):
    def __init__(self, code: Any, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# ------------------------------------------------------------------- output
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    too_wide = len(cols) > TABLE_MAX_COLUMNS or any(len(x) > TABLE_MAX_CELL or "\n" in x for row in cells for x in row)
    if too_wide:
        width = max(len(c) for c in cols)
        blocks = []
        for i, row in enumerate(cells, 1):
            lines = [f"-[ {i} ]" + "-" * max(3, width - 2)]
            for c, x in zip(cols, row):
                x = x.replace("\n", "\n" + " " * (width + 3))
                lines.append(f"{c.ljust(width)} | {x}")
            blocks.append("\n".join(lines))
        return "\n".join(blocks) + f"\n({len(rows)} {'row' if len(rows) == 1 else 'rows'})"
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells]
    out.append(f"({len(rows)} {'row' if len(rows) == 1 else 'rows'})")
    return "\n".join(out)


def format_mapping(d: dict[str, Any], indent: int = 0) -> str:
    if not d:
        return " " * indent + "(empty)"
    width = max(len(str(k)) for k in d)
    out = []
    pad = " " * indent
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.append(f"{pad}{k}:")
            out.append(format_mapping(v, indent + 2))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out.append(f"{pad}{k}:")
            out.append("\n".join(pad + "  " + line for line in format_table(v).splitlines()))
        elif isinstance(v, (list, dict)) and not v:
            out.append(f"{pad}{str(k).ljust(width)}  (none)")
        elif isinstance(v, list):
            out.append(f"{pad}{str(k).ljust(width)}  {', '.join(_cell(x) for x in v)}")
        else:
            text = _cell(v).replace("\n", "\n" + pad + " " * (width + 2))
            out.append(f"{pad}{str(k).ljust(width)}  {text}")
    return "\n".join(out)


def format_result(result: Any) -> str:
    if isinstance(result, list):
        if not result:
            return "(no rows)"
        if all(isinstance(r, dict) for r in result):
            return format_table(result)
        return "\n".join(_cell(r) for r in result)
    if isinstance(result, dict):
        return format_mapping(result)
    return _cell(result)


def _from_config(path: str | None) -> tuple[str | None, str | None]:
    if not path:
        return None, None
    from presenced.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    return (cfg.http.listen or None), (cfg.http.token or None)


@click.command("rpc", context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.option("--url", metavar="URL", help="API address: http://HOST:PORT[/RPC] or HOST:PORT "
              f"(default: $PRESENCED_RPC_URL, --config's http.listen, {DEFAULT_URL}).")
@click.option("--token", metavar="TOKEN", help="Bearer token (default: $PRESENCED_RPC_TOKEN or --config's http.token).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Take URL and token from this config file.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON result (for scripts).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the answer.")
@click.argument("method")
@click.argument("params", nargs=-1, type=click.UNPROCESSED)
def rpc(url, token, config_file, as_json, timeout, method, params) -> None:
    """Call METHOD on a running presenced and print the result.

    \b
    Examples:
      presenced rpc system.listMethods
      presenced rpc presence.presentity_list full
      presenced rpc presence.watcher_list basic sip:alice@example.com
      presenced rpc presence.refreshWatchers sip:alice@example.com presence 1
      presenced rpc --json presence.counters
    """
    cfg_url, cfg_token = _from_config(config_file)
    target = url or os.environ.get("PRESENCED_RPC_URL") or cfg_url or DEFAULT_URL
    token = token or os.environ.get("PRESENCED_RPC_TOKEN") or cfg_token
    endpoint = normalize_url(target)
    try:
        result = call(endpoint, method, [typed_param(p) for p in params], token=token, timeout=timeout)
    except ConnectError as e:
        click.echo(f"presenced rpc: {e}", err=True)
        sys.exit(1)
    except RpcCallError as e:
        if as_json:
            click.echo(json.dumps({"code": e.code, "message": e.message, "data": e.data}), err=True)
        else:
            extra = f" ({_cell(e.data)})" if e.data is not None else ""
            click.echo(f"presenced rpc: {method}: error {e.code}: {e.message}{extra}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(format_result(result))
