#!/usr/bin/env python3
"""PUBLISH/s and SUBSCRIBE dialogs/s of presenced for each storage backend and mode.

For every (backend, mode) combination this runs the shared SIPp harness
(``${PRESENCED_BENCH_HARNESS:-../shared/bench}/run.py``, see its README.md)
once, with ``--servers ours`` and a ``--server-cmd`` that starts a real
``presenced serve`` process with that backend's ``--db-url`` and the mode's
``--set presence.…`` parameters.  The harness does the SIPp load (scenario A:
initial PUBLISH; B: PUBLISH new + modify with SIP-If-Match + remove; C:
SUBSCRIBE -> NOTIFY -> un-SUBSCRIBE -> NOTIFY), the rate ladder, the pass
criteria, server CPU from /proc/<pid>/stat and the latency percentiles; this
script only builds the matrix, keeps the databases clean and comparable, and
writes one table.

Backends: memory, sqlite (a file in a private tmp dir), postgresql, mysql.
Modes (Kamailio's parameter names):

  mem     subs_db_mode=0 publ_cache=2              (memory backend only: --db-url memory)
  wt      subs_db_mode=1 publ_cache=1              write-through
  wb      subs_db_mode=2 publ_cache=1 db_update_period=5   write-back
  db      subs_db_mode=3 publ_cache=0              database only
  cache   subs_db_mode=0 publ_cache=2              on a database backend (not in the default set)
  wb0     subs_db_mode=2 publ_cache=0 db_update_period=5   (not in the default set)

Clean state: every server start (the harness starts a fresh server per
scenario, per step of A and after every failed step) goes through
``backends.py _serve``, which drops this benchmark's private tables
(``--table-prefix``, default ``presbench_``: ``presbench_presentity``,
``presbench_active_watchers``, ``presbench_watchers``, ``presbench_xcap`` and
``presenced_presbench_active_watchers_ext``, plus their rows in ``version``)
or deletes the SQLite file, then execs ``presenced serve`` (same pid, so the
harness measures presenced itself).  The server re-creates the tables.  The
tables are dropped again at the end.

  .venv/bin/python bench/backends.py                          # quick, every backend, ~5 min
  .venv/bin/python bench/backends.py --backends sqlite,postgresql --modes wt,db
  .venv/bin/python bench/backends.py --mode full --repeat 1   # real maxima, ~6 min per combination
  .venv/bin/python bench/backends.py --list                   # print the combinations and commands
  .venv/bin/python bench/backends.py --report bench/results/<stamp>-backends/results.json  # re-render RESULTS.md

``make bench-backends`` runs it with BENCH_BACKENDS, BENCH_STORE_MODES,
BENCH_MODE, BENCH_STEP_SECONDS, BENCH_SCENARIOS, BENCH_REPEAT, BENCH_PORT as
defaults for the options of the same name.

Results: bench/results/<stamp>-backends/RESULTS.md and results.json (the
harness's results.json of every combination, steps included); raw harness
logs (server.log, stat.csv, errors.txt …) in bench/runs/<stamp>-backends/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKENDS = ("memory", "sqlite", "postgresql", "mysql")
DEFAULT_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}

# mode key -> (description, --set parameters)
MODES: dict[str, tuple[str, dict[str, int]]] = {
    "mem": ("memory only", {"presence.subs_db_mode": 0, "presence.publ_cache": 2}),
    "wt": ("write-through", {"presence.subs_db_mode": 1, "presence.publ_cache": 1}),
    "wb": ("write-back", {"presence.subs_db_mode": 2, "presence.publ_cache": 1,
                          "presence.db_update_period": 5}),
    "db": ("DB only", {"presence.subs_db_mode": 3, "presence.publ_cache": 0}),
    "cache": ("memory on a DB", {"presence.subs_db_mode": 0, "presence.publ_cache": 2}),
    "wb0": ("write-back, publ DB only", {"presence.subs_db_mode": 2, "presence.publ_cache": 0,
                                         "presence.db_update_period": 5}),
}
DEFAULT_DB_MODES = ("wt", "wb", "db")
# every combination also gets these
COMMON_SETS = {"presence_xml.force_active": 1}

SCENARIO_UNITS = {"A": ("PUBLISH/s", 1), "B": ("PUBLISH/s", 3), "C": ("dialogs/s", 1),
                  "D": ("NOTIFY/s", None), "E": ("MWI cycles/s", 1)}
SCENARIO_TITLES = {"A": "A: initial PUBLISH", "B": "B: PUBLISH new+modify+remove",
                   "C": "C: SUBSCRIBE dialog", "D": "D: fan-out NOTIFY", "E": "E: MWI cycle"}

# server.log lines worth reporting (presenced logs at --log-level warning)
LOG_PATTERNS = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|database is locked|deadlock|"
                          r"Lock wait timeout|too many connections", re.I)


def table_names(prefix: str) -> dict[str, str]:
    return {k: prefix + k for k in ("presentity", "active_watchers", "watchers", "xcap", "subscriber")}


def combos(backends: list[str], modes: list[str]) -> list[tuple[str, str]]:
    out = []
    for b in backends:
        if b == "memory":
            out.append((b, "mem"))
            continue
        for m in modes:
            if m == "mem":
                continue  # memory mode = the memory backend
            out.append((b, m))
    return out


def db_url(backend: str, args: argparse.Namespace, tmpdir: str, label: str) -> str:
    if backend == "memory":
        return "memory"
    if backend == "sqlite":
        return "sqlite://" + os.path.join(tmpdir, f"{label}.db")  # sqlite:///abs/path
    return args.pg_url if backend == "postgresql" else args.mysql_url


def server_sets(backend: str, mode: str, prefix: str) -> dict[str, object]:
    sets: dict[str, object] = dict(COMMON_SETS)
    sets.update(MODES[mode][1])
    if backend != "memory":
        sets.update({
            "presence.presentity_table": prefix + "presentity",
            "presence.active_watchers_table": prefix + "active_watchers",
            "presence.watchers_table": prefix + "watchers",
            "presence_xml.xcap_table": prefix + "xcap",
        })
    return sets


def presenced_cmd(presenced: str, url: str, sets: dict[str, object], log_level: str) -> list[str]:
    cmd = [presenced, "serve", "--listen", "udp:{host}:{port}", "--listen", "tcp:{host}:{port}",
           "--db-url", url, "--log-level", log_level]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def harness_server_cmd(presenced: list[str], url: str, prefix: str) -> str:
    """The --server-cmd string: `backends.py _serve` cleans, then execs presenced.

    The harness substitutes {host} {port} {workdir} with str.format, so the
    URL and everything else must not contain braces."""
    wrapper = [sys.executable, os.path.abspath(__file__), "_serve", "--db-url", url,
               "--table-prefix", prefix, "--"]
    for part in wrapper + presenced:
        if re.sub(r"\{(host|port|workdir)\}", "", part).count("{") or "}" in re.sub(
                r"\{(host|port|workdir)\}", "", part):
            raise SystemExit(f"braces in {part!r} would break the harness's --server-cmd")
    return " ".join(shlex.quote(x) for x in wrapper + presenced)


# ---------------------------------------------------------------- DB cleaning
async def _drop(url: str, prefix: str) -> None:
    import logging

    from presenced.storage import Store

    # asyncmy logs MySQL's "Unknown table" notes of DROP TABLE IF EXISTS as warnings
    logging.getLogger("asyncmy").setLevel(logging.ERROR)

    store = Store.from_url(url, tables=table_names(prefix))
    await store.connect()
    try:
        await store.drop_tables()
    finally:
        await store.close()


def clean_db(url: str, prefix: str) -> None:
    """Drop the private tables (SQL) or delete the SQLite file and its WAL."""
    if url == "memory":
        return
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        for suf in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(path + suf)
            except FileNotFoundError:
                pass
        return
    asyncio.run(_drop(url, prefix))


def cmd_serve(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="backends.py _serve")
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--table-prefix", required=True)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no server command after --")
    t0 = time.perf_counter()
    clean_db(a.db_url, a.table_prefix)
    print(f"# backends.py _serve: cleaned {a.db_url.split('@')[-1]} (prefix {a.table_prefix}) in "
          f"{time.perf_counter() - t0:.2f}s; exec {cmd[0]}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


# ---------------------------------------------------------------- DB server CPU
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def find_db_pids(backend: str) -> list[int]:
    """Root pid(s) of the local database server: the postmaster, mariadbd/mysqld."""
    names = {"postgresql": ("postgres",), "mysql": ("mariadbd", "mysqld")}.get(backend, ())
    roots = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in names:
            st = _stat(int(d))
            if st is None:
                continue
            ppid = int(st[1])
            try:
                with open(f"/proc/{ppid}/comm") as f:
                    pcomm = f.read().strip()
            except OSError:
                pcomm = ""
            if pcomm not in names:  # the postmaster, not its backends
                roots.append(int(d))
    return roots


def tree_cpu_s(root: int) -> float | None:
    """utime+stime of `root` and its live descendants, plus the CPU of children
    it has already reaped (cutime+cstime): PostgreSQL backends come and go."""
    st = _stat(root)
    if st is None:
        return None
    total = sum(int(x) for x in st[11:15])  # utime stime cutime cstime
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        for k in kids:
            kst = _stat(k)
            if kst is not None:
                total += int(kst[11]) + int(kst[12])
                todo.append(k)
    return total / CLK_TCK


class DbCpuSampler:
    """Samples the database server's CPU (whole process tree) every `period` s,
    so that each harness step's window can be cut out afterwards."""

    def __init__(self, roots: list[int], period: float = 0.25) -> None:
        import threading

        self.roots, self.period = roots, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        vals = [tree_cpu_s(r) for r in self.roots]
        if all(v is not None for v in vals):
            self.samples.append((time.time(), sum(vals)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def start(self) -> "DbCpuSampler":
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=2)
        self._sample()

    def at(self, t: float) -> float | None:
        s = self.samples
        if not s or t < s[0][0] or t > s[-1][0]:
            return None
        lo, hi = 0, len(s) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if s[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (t0, c0), (t1, c1) = s[lo], s[hi]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)

    def window(self, t0: float, t1: float) -> float | None:
        a, b = self.at(t0), self.at(t1)
        return None if a is None or b is None else b - a


def step_window(step_dir: str) -> tuple[float, float] | None:
    """(start, end) epoch seconds of a SIPp step, from its stat.csv."""
    try:
        with open(os.path.join(step_dir, "stat.csv"), errors="replace") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
        head = lines[0].split(";")
        last = dict(zip(head, lines[-1].split(";")))
        return float(last["StartTime"].split()[-1]), float(last["CurrentTime"].split()[-1])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def add_db_cpu(raw: dict, out_dir: str, sampler: DbCpuSampler | None) -> None:
    """Annotate every harness step with the DB server's CPU during the step."""
    if sampler is None:
        return
    for r in raw.get("runs", []):
        for sc in r.get("scenarios", {}).values():
            for st in sc.get("steps", []):
                w = step_window(os.path.join(out_dir, st.get("dir", "")))
                if not w:
                    continue
                cpu = sampler.window(*w)
                if cpu is None:
                    continue
                wall = max(1e-6, w[1] - w[0])
                succ = max(1.0, st.get("stats", {}).get("SuccessfulCall", 0))
                st["db_cpu_s"] = cpu
                st["db_cpu_pct"] = 100.0 * cpu / wall
                st["db_cpu_us_per_call"] = 1e6 * cpu / succ


# ---------------------------------------------------------------- results
def _scan_logs(combo_dir: str) -> dict[str, object]:
    counts: dict[str, int] = {}
    first: list[str] = []
    for path in sorted(glob.glob(os.path.join(combo_dir, "**", "server.log"), recursive=True)):
        try:
            with open(path, errors="replace") as f:
                for ln in f:
                    if ln.startswith("# "):
                        continue
                    m = LOG_PATTERNS.search(ln)
                    if not m:
                        continue
                    key = m.group(0).upper()
                    counts[key] = counts.get(key, 0) + 1
                    msg = re.sub(r"^\S+ \S+ ", "", ln.strip())[:300]
                    if len(first) < 5 and msg not in first:
                        first.append(msg)
        except OSError:
            pass
    return {"counts": counts, "first": first}


def _per_unit(v, per_call):
    return None if v is None or not per_call else v / per_call


def summarize_combo(res: dict, scenarios: list[str]) -> dict[str, dict]:
    """Per scenario: max passing step, reference (first) step, failure counts (medians
    over repeats come from the harness's summary; steps from the first repeat)."""
    out: dict[str, dict] = {}
    summ = res.get("summary", {})
    lab = next(iter(summ), None)
    runs = res.get("runs", [])
    for k in scenarios:
        unit, per_call = SCENARIO_UNITS[k]
        s = (summ.get(lab) or {}).get(k) if lab else None
        steps = []
        noisy = []
        errors = []
        for r in runs:
            sc = r.get("scenarios", {}).get(k) or {}
            steps += [st for st in sc.get("steps", []) if not st.get("discarded_noisy")]
            noisy += [st for st in sc.get("steps", []) if st.get("discarded_noisy")]
            if sc.get("error"):
                errors.append(sc["error"])
        passing = [st for st in steps if st.get("ok")]
        best = max(passing, key=lambda st: st["rate"]) if passing else None
        first = steps[0] if steps else None
        fails = [st for st in steps if not st.get("ok")]

        def step_view(st):
            if not st:
                return None
            stats = st.get("stats", {})
            return {
                "offered": st["rate"] * (per_call or 1),
                "achieved": st["achieved_cps"] * (per_call or 1),
                "ok": st.get("ok"),
                "calls": st.get("calls"),
                "failed_calls": int(stats.get("FailedCall", 0)),
                "unexpected": int(stats.get("FailedUnexpectedMessage", 0)),
                "udp_retrans_failures": int(stats.get("FailedMaxUDPRetrans", 0)),
                "recv_timeouts": int(stats.get("FailedTimeoutOnRecv", 0)),
                "retransmissions": int(stats.get("Retransmissions", 0)),
                "no_final_notify": st.get("no_final_notify", 0),
                "server_cpu_pct": st.get("server_cpu_pct"),
                "server_cpu_us_per_unit": _per_unit(st.get("server_cpu_us_per_call"), per_call),
                "sipp_cpu_pct": st.get("sipp_cpu_pct"),
                "db_cpu_pct": st.get("db_cpu_pct"),
                "db_cpu_us_per_unit": _per_unit(st.get("db_cpu_us_per_call"), per_call),
                "other_busy_cores": st.get("other_busy_cores"),
                "p50_us": (st.get("latency_all") or {}).get("p50_us"),
                "p99_us": (st.get("latency_all") or {}).get("p99_us"),
                "reasons": st.get("reasons", []),
            }
        out[k] = {
            "unit": unit,
            "max_rate": (s or {}).get("max_rate"),
            "max_rate_values": (s or {}).get("values"),
            "cpu_us_per_unit_median": (s or {}).get("cpu_us_per_unit"),
            "limit_found": bool(fails),
            "best": step_view(best),
            "ref": step_view(first),
            "first_failure": step_view(fails[0]) if fails else None,
            # failed under background load (> 0.5 other cores, which includes the DB server)
            # and repeated by the harness; not counted in the rates
            "repeated_noisy": [step_view(st) for st in noisy],
            "steps": len(steps),
            "failed_calls_all_steps": sum(int(st.get("stats", {}).get("FailedCall", 0)) for st in steps),
            "calls_all_steps": sum(int(st.get("calls") or 0) for st in steps),
            "errors": errors,
        }
        lp = [r.get("latency_probe") for r in runs if r.get("latency_probe")]
        if lp:
            out["_probe"] = lp[0]
    return out


def fnum(v, nd=0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def fms(us) -> str:
    return "–" if us is None else f"{us / 1000.0:.2f}"


def mode_label(backend: str, mode: str) -> str:
    sets = MODES[mode][1]
    s = f"{mode} ({MODES[mode][0]}): subs_db_mode={sets['presence.subs_db_mode']} publ_cache={sets['presence.publ_cache']}"
    if "presence.db_update_period" in sets:
        s += f" db_update_period={sets['presence.db_update_period']}"
    return s


def markdown(meta: dict, entries: list[dict], scenarios: list[str]) -> str:
    L = []
    L.append("# presenced storage backends: PUBLISH/s and SUBSCRIBE dialogs/s")
    L.append("")
    mi = meta["machine"]
    L.append(f"- date: {meta['date']}  host: {mi.get('hostname')}  CPUs: {mi.get('cpus')} "
             f"({mi.get('cpu_model', '?')}), {mi.get('mem_total', '?')}; load average at start "
             f"{' '.join(mi.get('loadavg_at_start', []))}")
    L.append(f"- presenced {meta['presenced_version']} (git {meta['git']}), Python {mi.get('python')}, "
             f"{mi.get('sipp', 'sipp ?')}; PostgreSQL: {meta.get('pg_version') or '–'}; "
             f"MySQL/MariaDB: {meta.get('mysql_version') or '–'}")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- harness: {meta['harness']} `--mode {meta['mode']}` (steps of "
             f"{meta['step_s']:g} s; {meta['ladder']}), repeat {meta['repeat']}, "
             f"UDP 127.0.0.1:{meta['port']}; total {meta['duration_s'] / 60:.1f} min")
    L.append("- every server: `presenced serve --db-url URL --log-level warning "
             + " ".join(f"--set {k}={v}" for k, v in COMMON_SETS.items())
             + " --set …` (mode parameters below; DB backends also set private table names "
             f"`{meta['table_prefix']}*`), tables dropped / SQLite file deleted before every server start")
    L.append("- sqlite: a file in a private tmp dir (WAL); "
             f"postgresql: `{meta['urls'].get('postgresql', '–')}`; mysql: `{meta['urls'].get('mysql', '–')}`")
    L.append("")
    L.append("Rates are the achieved rate of the highest passing step (harness criteria: <1% failed calls, "
             "no unexpected message, ≥90% of the offered rate, ≤1% retransmissions). `≥` = no step failed, "
             "so the real limit is higher (quick mode tries only two rates). "
             "CPU µs/unit = server utime+stime (from /proc/PID/stat) during the step / units "
             "(a PUBLISH for A and B, a complete subscribe dialog for C). "
             "Latency is SIPp's client-side latency (A, B: PUBLISH → 200; C: SUBSCRIBE → initial NOTIFY "
             "and un-SUBSCRIBE → final NOTIFY); at low rates SIPp adds up to ~1 ms of its own.")
    L.append("")

    # overview
    L.append("## Overview: max sustained rate (presenced CPU µs per unit at that rate + DB server CPU µs)")
    L.append("")
    hdr = "| backend | mode | " + " | ".join(f"{SCENARIO_TITLES[k]} ({SCENARIO_UNITS[k][0]})"
                                             for k in scenarios) + " |"
    L.append(hdr)
    L.append("|" + "---|" * (2 + len(scenarios)))
    for e in entries:
        cells = []
        for k in scenarios:
            s = e["scenarios"].get(k)
            if e.get("error") or not s:
                cells.append("error")
                continue
            b = s["best"]
            if not b:
                cells.append("**0 (every step failed)**")
                continue
            ge = "" if s["limit_found"] else "≥ "
            dbc = b.get("db_cpu_us_per_unit")
            # a higher step failed, but under background load, so the harness did not count it
            noisy = [f["offered"] for f in s.get("repeated_noisy", []) if f["offered"] > b["offered"]]
            cells.append(f"{ge}{fnum(s['max_rate'])} ({fnum(b['server_cpu_us_per_unit'])} µs"
                         + (f" + DB {fnum(dbc)} µs)" if dbc is not None else ")")
                         + (f"; {fnum(min(noisy))} failed under background load" if noisy and ge else ""))
        L.append(f"| {e['backend']} | {e['mode']} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Modes: " + "; ".join(f"`{m}` = {mode_label('', m).split(': ', 1)[1]}"
                                    for m in meta["modes_used"]) + ".")
    L.append("")

    def step_table(title: str, which: str, note: str) -> None:
        L.append(title)
        L.append("")
        if note:
            L.append(note)
            L.append("")
        L.append("| backend | mode | scenario | offered | achieved | pass | failed / calls | retrans | "
                 "server CPU % | server CPU µs/unit | DB server CPU % | DB CPU µs/unit | p50 ms | p99 ms | "
                 "background cores |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for e in entries:
            for k in scenarios:
                s = e["scenarios"].get(k)
                r = s and s[which]
                if not r:
                    if s is not None and which == "best":
                        L.append(f"| {e['backend']} | {e['mode']} | {k} | no passing step | | | | | | | | | | | |")
                    continue
                L.append(f"| {e['backend']} | {e['mode']} | {k} | {fnum(r['offered'])} | {fnum(r['achieved'])} | "
                         f"{'yes' if r['ok'] else '**no**'} | {r['failed_calls']} / {r['calls']} | "
                         f"{r['retransmissions']} | {fnum(r['server_cpu_pct'])} | "
                         f"{fnum(r['server_cpu_us_per_unit'])} | {fnum(r.get('db_cpu_pct'))} | "
                         f"{fnum(r.get('db_cpu_us_per_unit'))} | {fms(r['p50_us'])} | {fms(r['p99_us'])} | "
                         f"{background(r)} |")
        L.append("")

    def background(r):
        o = r.get("other_busy_cores")
        if o is None:
            return "–"
        return f"{max(0.0, o - (r.get('db_cpu_pct') or 0) / 100.0):.2f}"

    db_note = ("DB server CPU = the whole local PostgreSQL (postmaster and every backend) or "
               "MariaDB process during the step, so it includes other clients of the shared "
               "server; SQLite runs inside presenced (in its CPU). Offered/achieved in units "
               "(B: 3 PUBLISH per call). Background cores = CPU used during the step by "
               "everything except presenced, SIPp and the DB server (other users of this "
               "shared machine): high values make that row less reliable.")
    step_table("## At the reference rate (the same offered load for every combination)", "ref", db_note)
    step_table("## At the max sustained rate", "best", "")

    # failures
    L.append("## Failing steps and server log")
    L.append("")
    L.append("First failing step of each scenario, and failed steps the harness discarded and repeated "
             "because other processes used > 0.5 cores during them (`repeated`; for PostgreSQL/MySQL "
             "the harness counts the DB server's CPU as such background load).")
    L.append("")
    L.append("| backend | mode | scenario | step | offered → achieved | failed / calls | "
             "unexpected (non-2xx) | max-retrans / recv timeouts | other busy cores (DB server %) | why (SIPp calls/s) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    nfail = 0
    for e in entries:
        for k in scenarios:
            s = e["scenarios"].get(k)
            if not s:
                continue
            rows = [("repeated", f) for f in s.get("repeated_noisy", [])]
            if s["first_failure"]:
                rows.append(("first failure", s["first_failure"]))
            for what, f in rows:
                nfail += 1
                why = "; ".join(f["reasons"])[:200]
                L.append(f"| {e['backend']} | {e['mode']} | {k} | {what} | {fnum(f['offered'])} → "
                         f"{fnum(f['achieved'])} | {f['failed_calls']} / {f['calls']} | {f['unexpected']} | "
                         f"{f['udp_retrans_failures']} / {f['recv_timeouts']} | "
                         f"{fnum(f.get('other_busy_cores'), 2)} ({fnum(f.get('db_cpu_pct'))}) | {why} |")
    if not nfail:
        L.append("| (none) | | | | | | | | | |")
    L.append("")
    any_log = False
    for e in entries:
        lg = e.get("log") or {}
        if lg.get("counts") or e.get("error"):
            any_log = True
            cnt = ", ".join(f"{k} ×{v}" for k, v in sorted(lg.get("counts", {}).items()))
            L.append(f"- {e['backend']}/{e['mode']}: {cnt or ''} {('harness error: ' + e['error']) if e.get('error') else ''}")
            for msg in lg.get("first", [])[:3]:
                L.append(f"  - `{msg.replace('`', chr(39))}`")
    if not any_log:
        L.append("No ERROR/WARNING/Traceback lines in any server.log.")
    L.append("")

    # unloaded latency
    probes = [(e, e["scenarios"].get("_probe")) for e in entries if e["scenarios"].get("_probe")]
    if probes:
        L.append("## Unloaded latency (harness probe, one request at a time, µs p50 / p99)")
        L.append("")
        L.append("| backend | mode | PUBLISH | PUBLISH remove | SUBSCRIBE → NOTIFY | un-SUBSCRIBE → NOTIFY |")
        L.append("|---|---|---|---|---|---|")
        for e, p in probes:
            def pp(key):
                v = p.get(key) or {}
                return f"{fnum(v.get('p50_us'))} / {fnum(v.get('p99_us'))}"
            L.append(f"| {e['backend']} | {e['mode']} | {pp('publish')} | {pp('publish_remove')} | "
                     f"{pp('subscribe_to_notify')} | {pp('unsubscribe_to_notify')} |")
        L.append("")
    L.append("Raw per-step logs (server.log, SIPp stat.csv, errors.txt): "
             f"`bench/runs/{meta['stamp']}-backends/<backend>-<mode>/` (git-ignored); every step's numbers "
             "are in results.json next to this file.")
    L.append("")
    return "\n".join(L)


def run_harness(cmd: list[str], logpath: str) -> int:
    """Run run.py; keep its whole output in `logpath`, echo only its progress lines
    (its own per-combination tables are in bench/runs/…/<label>/results.md)."""
    progress = re.compile(r"^\d\d:\d\d:\d\d |^results: |!!|Traceback|[Ee]rror")
    with open(logpath, "w") as log:
        log.write("# " + " ".join(shlex.quote(x) for x in cmd) + "\n")
        log.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None
        in_table = False
        for ln in p.stdout:
            log.write(ln)
            if ln.startswith("# Presence benchmark results"):
                in_table = True
            if (not in_table or ln.startswith("results: ")) and progress.search(ln):
                print("   " + ln.rstrip(), flush=True)
        return p.wait()


# ---------------------------------------------------------------- main
def env_default(name: str, default: str) -> str:
    v = os.environ.get(name, "")
    return v if v.strip() else default


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="backends.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=env_default("BENCH_BACKENDS", ",".join(BACKENDS)),
                    help="comma list of memory,sqlite,postgresql,mysql (env BENCH_BACKENDS)")
    ap.add_argument("--modes", default=env_default("BENCH_STORE_MODES", ",".join(DEFAULT_DB_MODES)),
                    help="modes for the DB backends: " + ",".join(m for m in MODES if m != "mem")
                    + " (env BENCH_STORE_MODES; memory always runs mode mem)")
    ap.add_argument("--mode", choices=("quick", "full"), default=env_default("BENCH_MODE", "quick"),
                    help="harness mode (env BENCH_MODE): quick = two 2 s steps per scenario, "
                         "full = doubling + bisection with 5 s steps")
    ap.add_argument("--step-seconds", type=float,
                    default=float(env_default("BENCH_STEP_SECONDS", "0")) or None,
                    help="override the harness step length (env BENCH_STEP_SECONDS)")
    ap.add_argument("--scenarios", default=env_default("BENCH_SCENARIOS", "A,B,C"),
                    help="harness scenarios (env BENCH_SCENARIOS, default A,B,C)")
    ap.add_argument("--repeat", type=int, default=int(env_default("BENCH_REPEAT", "1")))
    ap.add_argument("--port", type=int, default=int(env_default("BENCH_PORT", "15260")),
                    help="server port; SIPp uses port+1..+5 and port+11..+13 (env BENCH_PORT)")
    ap.add_argument("--pg-url", default=env_default("BENCH_PG_URL", DEFAULT_URLS["postgresql"]))
    ap.add_argument("--mysql-url", default=env_default("BENCH_MYSQL_URL", DEFAULT_URLS["mysql"]))
    ap.add_argument("--table-prefix", default=env_default("BENCH_TABLE_PREFIX", "presbench_"))
    ap.add_argument("--harness", default=env_default("PRESENCED_BENCH_HARNESS",
                                                     os.path.join(ROOT, "..", "shared", "bench")))
    ap.add_argument("--presenced", default=os.path.join(os.path.dirname(sys.executable), "presenced"))
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--no-probe", action="store_true", help="skip the harness's unloaded-latency probe")
    ap.add_argument("--out", help="results dir (default bench/results/<stamp>-backends)")
    ap.add_argument("--list", action="store_true", help="print the combinations and server commands, run nothing")
    a = ap.parse_args(argv)
    a.backends = [x.strip() for x in a.backends.split(",") if x.strip()]
    a.modes = [x.strip() for x in a.modes.split(",") if x.strip()]
    for b in a.backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r} (expected {', '.join(BACKENDS)})")
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (expected {', '.join(MODES)})")
    a.scenarios = [x.strip().upper() for x in a.scenarios.split(",") if x.strip()]
    for s in a.scenarios:
        if s not in SCENARIO_UNITS:
            ap.error(f"unknown scenario {s!r}")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,20}", a.table_prefix):
        ap.error("--table-prefix: letters, digits, _ (at most 21)")
    return a


def _db_version(url: str) -> str | None:
    async def go():
        from presenced.storage import Store
        st = Store.from_url(url)
        await st.connect()
        try:
            rows = await st._fetch("SELECT version()")
            return str(rows[0][0]).split(" on ")[0]
        finally:
            await st.close()
    try:
        return asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"unreachable: {exc}"


def rebuild_report(path: str) -> int:
    """Re-render RESULTS.md next to a results.json written by this script."""
    with open(path) as f:
        data = json.load(f)
    meta = data["meta"]
    entries = data["summary"]
    for e in entries:
        raw = (data.get("harness_results") or {}).get(e["label"])
        if raw:
            e["scenarios"] = summarize_combo(raw, meta["scenarios"])
    md = markdown(meta, entries, meta["scenarios"])
    out = os.path.join(os.path.dirname(os.path.abspath(path)), "RESULTS.md")
    with open(out, "w") as f:
        f.write(md)
    print(out)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        cmd_serve(argv[1:])
        return 0
    if argv[:1] == ["--report"] and len(argv) == 2:
        return rebuild_report(argv[1])
    a = parse_args(argv)
    harness = os.path.abspath(a.harness)
    run_py = os.path.join(harness, "run.py")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    resdir = os.path.abspath(a.out or os.path.join(ROOT, "bench", "results", f"{stamp}-backends"))
    rawdir = os.path.join(ROOT, "bench", "runs", f"{stamp}-backends")
    tmpdir = tempfile.mkdtemp(prefix="presenced-bench-")
    plan = combos(a.backends, a.modes)
    cmds = {}
    for b, m in plan:
        lab = f"{b}-{m}"
        url = db_url(b, a, tmpdir, lab)
        cmds[lab] = harness_server_cmd(presenced_cmd(a.presenced, url, server_sets(b, m, a.table_prefix),
                                                     a.log_level), url, a.table_prefix)
    if a.list:
        for lab, c in cmds.items():
            print(f"{lab}:\n  {c}")
        shutil.rmtree(tmpdir, ignore_errors=True)
        return 0
    if not os.path.isfile(run_py):
        print(f"harness not found: {run_py} (set --harness or PRESENCED_BENCH_HARNESS)", file=sys.stderr)
        return 2
    if not shutil.which("sipp"):
        print("sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if not os.access(a.presenced, os.X_OK):
        print(f"{a.presenced} not found: run 'make venv' first", file=sys.stderr)
        return 2

    sys.path.insert(0, harness)
    import run as harness_run  # noqa: E402 - the harness's machine_info / MODES

    import presenced

    mode_params = dict(harness_run.MODES[a.mode])
    step_s = a.step_seconds or mode_params["step_s"]
    r0 = ", ".join("%s %g" % (k, mode_params["r0"][k]) for k in a.scenarios)
    ladder = (f"start {r0} calls/s, "
              f"x{mode_params['factor']:g} per step, at most {mode_params['max_steps']} steps"
              + (f" + {mode_params['bisect']} bisections" if mode_params["bisect"] else ""))
    try:
        git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5).stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        git = "?"

    urls = {}
    versions = {}
    for b in ("postgresql", "mysql"):
        if b in a.backends:
            urls[b] = a.pg_url if b == "postgresql" else a.mysql_url
            versions[b] = _db_version(urls[b])
    hargs = argparse.Namespace(sipp_bin="sipp", kamailio_bin="/usr/sbin/kamailio")
    meta = {
        "stamp": stamp, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": harness_run.machine_info(hargs), "platform": platform.platform(),
        "presenced_version": getattr(presenced, "__version__", "?"), "git": git,
        "command": " ".join([f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                             if k.startswith("BENCH_") and k != "BENCH_SKIP_INSTALL"]
                            + [shlex.quote(x) for x in [os.path.relpath(sys.executable, ROOT),
                                                     os.path.relpath(os.path.abspath(__file__), ROOT)]
                                                    + argv]),
        "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
        "harness": harness, "mode": a.mode, "step_s": step_s, "ladder": ladder, "repeat": a.repeat,
        "port": a.port, "scenarios": a.scenarios, "table_prefix": a.table_prefix,
        "urls": urls, "pg_version": versions.get("postgresql"), "mysql_version": versions.get("mysql"),
        "modes_used": sorted({m for _, m in plan}, key=list(MODES).index),
        "server_cmds": cmds,
    }
    os.makedirs(resdir, exist_ok=True)
    os.makedirs(rawdir, exist_ok=True)
    entries = []
    t_begin = time.time()
    print(f"== {len(plan)} combinations x scenarios {','.join(a.scenarios)}, harness mode {a.mode}; "
          f"raw logs {rawdir}; results {resdir}", flush=True)
    try:
        for i, (b, m) in enumerate(plan):
            lab = f"{b}-{m}"
            entry = {"backend": b, "mode": m, "label": lab, "sets": server_sets(b, m, a.table_prefix),
                     "server_cmd": cmds[lab], "scenarios": {}}
            entries.append(entry)
            ver = versions.get(b)
            if ver and ver.startswith("unreachable"):
                entry["error"] = ver
                print(f"== [{i + 1}/{len(plan)}] {lab}: skipped, {ver}", flush=True)
                continue
            out = os.path.join(rawdir, lab)
            hcmd = [sys.executable, run_py, "--mode", a.mode, "--repeat", str(a.repeat),
                    "--scenarios", ",".join(a.scenarios), "--servers", "ours", "--server-name", lab,
                    "--server-cmd", cmds[lab], "--port", str(a.port),
                    "--client-port", str(a.port + 1), "--control-port", str(a.port + 11),
                    "--out", out]
            if a.step_seconds:
                hcmd += ["--step-seconds", f"{a.step_seconds:g}"]
            if a.no_probe:
                hcmd += ["--no-probe"]
            print(f"== [{i + 1}/{len(plan)}] {lab}  ({MODES[m][0]}: "
                  + " ".join(f"{k.split('.', 1)[1]}={v}" for k, v in MODES[m][1].items()) + ")", flush=True)
            t0 = time.time()
            sampler = None
            if b in ("postgresql", "mysql"):
                roots = find_db_pids(b)
                if roots:
                    sampler = DbCpuSampler(roots).start()
                else:
                    print(f"   note: no local {b} server process found; DB CPU not measured", flush=True)
            try:
                rc = run_harness(hcmd, os.path.join(rawdir, f"{lab}.harness.log"))
            finally:
                if sampler:
                    sampler.stop()
            entry["harness_rc"] = rc
            entry["duration_s"] = time.time() - t0
            try:
                with open(os.path.join(out, "results.json")) as f:
                    raw = json.load(f)
            except (OSError, ValueError) as exc:
                entry["error"] = f"harness exit {rc}, no results.json ({exc})"
                continue
            if rc != 0:
                entry["error"] = f"harness exit {rc}"
            for r in raw.get("runs", []):
                r.pop("compat", None)  # NOTIFY format probe: not about storage
            add_db_cpu(raw, out, sampler)
            entry["raw"] = raw
            entry["scenarios"] = summarize_combo(raw, a.scenarios)
            entry["log"] = _scan_logs(out)
    finally:
        meta["duration_s"] = time.time() - t_begin
        # leave nothing behind: private tables and the SQLite dir
        for b in ("postgresql", "mysql"):
            if b in urls and not (versions.get(b) or "").startswith("unreachable"):
                try:
                    clean_db(urls[b], a.table_prefix)
                except Exception as exc:  # noqa: BLE001
                    print(f"note: could not drop the {a.table_prefix}* tables on {b}: {exc}", file=sys.stderr)
        shutil.rmtree(tmpdir, ignore_errors=True)
        summary = [{k: v for k, v in e.items() if k != "raw"} for e in entries]
        with open(os.path.join(resdir, "results.json"), "w") as f:
            json.dump({"meta": meta, "summary": summary,
                       "harness_results": {e["label"]: e.get("raw") for e in entries}},
                      f, indent=1, default=str)
        md = markdown(meta, entries, a.scenarios)
        with open(os.path.join(resdir, "RESULTS.md"), "w") as f:
            f.write(md)
    print()
    print(md)
    print(f"== results: {resdir}/RESULTS.md, results.json; raw logs {rawdir} "
          f"({meta['duration_s'] / 60:.1f} min)")
    return 1 if any(e.get("error") for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
