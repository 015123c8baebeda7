#!/usr/bin/env python3
"""Server CPU per unit of work at the SAME offered rate, presenced vs Kamailio.

The shared harness (../shared/bench) reports CPU per unit at each server's own
maximum rate. Where Kamailio's maximum is tiny (SQLite write-back: about 100
PUBLISH/s, its children answer 500 "database is locked" above that) that
compares a saturated Kamailio with a nearly idle presenced. This script runs
the harness's SIPp scenarios at one fixed rate below Kamailio's maximum
against both servers, interleaved and repeated, and reports the median server
CPU per unit (process tree, /proc utime+stime over the SIPp run), failed calls
and the latency percentiles the harness reports (SIPp's <log> lines, the
same transactions: A PUBLISH->200, B each PUBLISH, C SUBSCRIBE->NOTIFY and
un-SUBSCRIBE->NOTIFY, E each transaction). At a rate near Kamailio's maximum
this gives the p99 of both servers under the same load, which the harness
does not measure (it compares each at its own maximum, and at a low
reference rate).

  python bench/equal_rate.py --storage sqlite                       # A,B,C,E at the default rates
  python bench/equal_rate.py --storage sqlite --repeat 3 --workers 2 --scenarios A,B
  python bench/equal_rate.py --storage memory --rates A=2000,C=1000

Kamailio is started by the harness's own Server class (same config, same
SQLite schema and journal mode); presenced with the same write-back shape as
`BENCH_STORAGE=sqlite make bench` (subs_db_mode=2, publ_cache=1,
db_update_period=10). Results go to bench/results/<stamp>-equal-rate-<storage>/.

Besides CPU it reports how long the server's processes were runnable but
waiting for a CPU (/proc/PID/schedstat) and the p99 of each transaction
SIPp logs: on a 2-core machine the server shares the CPUs with SIPp, and
SIPp's own first transaction of a call carries a delay of its own (the
in-call ones show the server). --split-cpus runs the server on CPU 1 and
SIPp on CPU 0, to show what the scheduler's placement costs either server.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.environ.get("PRESENCED_BENCH_HARNESS", os.path.join(ROOT, "..", "shared", "bench"))

# scenario -> SIPp <log> names the harness takes its latency from
LATENCY = {"A": ["PUB"], "B": ["PUB1", "PUB2", "PUB3"], "C": ["SUB", "UNSUB-terminated"],
           "E": ["MPUB", "MSUB", "MUNSUB-terminated", "MPUBRM"]}
harness = None  # the shared harness module, imported by main()

# scenario -> (SIPp file, units per call, default calls/s); rates stay under
# Kamailio WITH_SQLITE's maxima on a 2-core VM (A 105, B 264 PUBLISH/s, C 148 dialogs/s).
SCENARIOS = {
    "A": ("publish.xml", 1, 80),
    "B": ("publish_cycle.xml", 3, 30),
    "C": ("subscribe.xml", 1, 60),
    "E": ("mwi.xml", 1, 25),
}
KEEP_SAMPLES = False
SPLIT_CPUS = False  # --split-cpus: server processes on CPU 1, SIPp on CPU 0
UNITS = {"A": "PUBLISH", "B": "PUBLISH", "C": "dialog", "E": "MWI cycle"}


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _sleeps(pids: list[int]) -> int:
    """Voluntary context switches of the processes: how often they went to
    sleep waiting for input, i.e. roughly their wake-ups."""
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        n += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return n


def _run_delay(pids: list[int]) -> float:
    """Seconds the processes spent runnable but waiting for a CPU (schedstat's
    second field): what sharing the cores with SIPp costs in latency."""
    ns = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/schedstat") as f:
                ns += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return ns / 1e9


def _cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            user += int(st[11])
            system += int(st[12])
        except (OSError, IndexError, ValueError):
            pass
    tck = os.sysconf("SC_CLK_TCK")
    return user / tck, system / tck


def _server_args(port: int, server_cmd: str | None, workdir: str) -> argparse.Namespace:
    return argparse.Namespace(
        kamailio_bin="/usr/sbin/kamailio", shm=2048, pkg=32, host="127.0.0.1", port=port, transport="udp",
        sqlite_journal="WAL", server_cmd=server_cmd, invocation_dir=ROOT, ready_timeout=20,
        client_port=5061)


def _presenced_cmd(venv: str, storage: str, workers: int) -> str:
    cmd = (f"{venv}/bin/presenced serve --listen udp:{{host}}:{{port}} --listen tcp:{{host}}:{{port}} "
           f"--set presence_xml.force_active=1 --log-level warning --workers {workers}")
    if storage == "sqlite":
        cmd += (" --db-url sqlite://{workdir}/presenced.sqlite --set presence.subs_db_mode=2"
                " --set presence.publ_cache=1 --set presence.db_update_period=10")
    else:
        cmd += " --db-url memory"
    return cmd


def _sipp(scen: str, rate: float, calls: int, tdir: str) -> dict:
    xml, _, _ = SCENARIOS[scen]
    stat = os.path.join(tdir, "stat.csv")
    cmd = ["sipp", "-sf", os.path.join(HARNESS, "scenarios", xml), "-inf", os.path.join(HARNESS, "data", "users.csv"),
           "-i", "127.0.0.1", "-p", "5061", "-cp", "5071", "-t", "u1", "-r", f"{rate:g}", "-m", str(calls),
           "-l", str(max(10, int(rate * 4))), "-nostdin", "-timeout", "120s", "-recv_timeout", "5000",
           "-default_behaviors", "all,-bye", "-aa", "-buff_size", "4194304", "-trace_stat", "-stf", stat, "-trace_logs",
           "127.0.0.1:5060"]
    pin = (lambda: os.sched_setaffinity(0, {0})) if SPLIT_CPUS else None
    with open(os.path.join(tdir, "sipp.stdout"), "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tdir,
                            preexec_fn=pin).returncode
    lines = open(stat).read().splitlines()
    hdr, last = lines[0].split(";"), lines[-1].split(";")

    def col(name: str) -> int:
        return int(last[hdr.index(name)])

    lat: list[float] = []
    per_tx: dict[str, list[float]] = {}
    for name in os.listdir(tdir):
        if name.endswith("_logs.log"):
            for tx, vals in harness.parse_log(os.path.join(tdir, name), LATENCY[scen]).items():
                lat += vals
                per_tx.setdefault(tx, []).extend(vals)
            os.remove(os.path.join(tdir, name))
    p = harness.pcts(lat)
    if KEEP_SAMPLES:
        with gzip.open(os.path.join(tdir, "latency_us.txt.gz"), "wt") as f:
            f.write("\n".join(f"{v:g}" for v in lat))
    return {"rc": rc, "ok": col("SuccessfulCall(C)"), "failed": col("FailedCall(C)"),
            "p50_us": p.get("p50_us"), "p99_us": p.get("p99_us"),
            "per_tx": {tx: {k: q.get(k) for k in ("n", "p50_us", "p99_us")}
                       for tx, q in ((tx, harness.pcts(v)) for tx, v in per_tx.items())}}


def run_one(label: str, server, scen: str, rate: float, seconds: float, tdir: str) -> dict:
    os.makedirs(tdir, exist_ok=True)
    for attempt in (1, 2):  # Kamailio now and then misses the harness's start-up probe; once more
        try:
            server.start()
            break
        except RuntimeError as e:
            if attempt == 2:
                raise
            print(f"  {label}: {e}; starting it again", flush=True)
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - it did not start; nothing to stop
                pass
            time.sleep(2.0)
    try:
        time.sleep(1.0)
        pids = _tree(server.proc.pid)
        if SPLIT_CPUS:
            for p in pids:
                os.sched_setaffinity(p, {1})
        calls = max(1, int(rate * seconds))
        (u0, s0), w0, d0, t0 = _cpu_seconds(pids), _sleeps(pids), _run_delay(pids), time.time()
        s = _sipp(scen, rate, calls, tdir)
        after = _tree(server.proc.pid) or pids
        (u1, s1), w1, d1, t1 = _cpu_seconds(after), _sleeps(after), _run_delay(after), time.time()
    finally:
        server.stop()
    units = s["ok"] * SCENARIOS[scen][1]
    c = (u1 - u0) + (s1 - s0)
    r = {"server": label, "scenario": scen, "rate": rate, "calls": calls, **s, "cpu_s": round(c, 3),
         "wall_s": round(t1 - t0, 2), "cpu_us_per_unit": round(1e6 * c / units, 1) if units else None,
         "sys_us_per_unit": round(1e6 * (s1 - s0) / units, 1) if units else None,
         "wakeups_per_unit": round((w1 - w0) / units, 2) if units else None,
         "cpu_wait_us_per_unit": round(1e6 * (d1 - d0) / units, 1) if units else None}
    print(f"  {label:18s} {scen} r={rate:g}/s ok={s['ok']}/{calls} failed={s['failed']} "
          f"cpu={r['cpu_s']:.2f}s -> {r['cpu_us_per_unit']} us/{UNITS[scen]} (kernel {r['sys_us_per_unit']}) "
          f"p50={r['p50_us']} p99={r['p99_us']} us wake-ups/{UNITS[scen]}={r['wakeups_per_unit']} "
          f"waiting for a CPU {r['cpu_wait_us_per_unit']} us/{UNITS[scen]}", flush=True)
    return r


def _median_of(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.median(vals):.2f}" if vals else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--scenarios", default="A,B,C,E")
    ap.add_argument("--rates", default="", help="per-scenario calls/s, e.g. A=80,B=30 (defaults: A=80,B=30,C=60,E=25)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each SIPp run")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats (medians reported)")
    ap.add_argument("--workers", type=int, default=1, help="presenced --workers")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.PARAM=VALUE",
                    help="extra presenced --set (repeatable), e.g. presence.fanout_batch=100")
    ap.add_argument("--venv", default=os.environ.get("VENV", os.path.join(ROOT, ".venv")))
    ap.add_argument("--out", default=None)
    ap.add_argument("--split-cpus", action="store_true",
                    help="pin the server's processes to CPU 1 and SIPp to CPU 0 (both servers alike)")
    ap.add_argument("--keep-samples", action="store_true",
                    help="keep every latency sample (run directory, latency_us.txt.gz) for a closer look at the tail")
    a = ap.parse_args(argv)
    global KEEP_SAMPLES, SPLIT_CPUS
    KEEP_SAMPLES = a.keep_samples
    SPLIT_CPUS = a.split_cpus
    if SPLIT_CPUS and not {0, 1} <= os.sched_getaffinity(0):
        ap.error("--split-cpus needs CPUs 0 and 1")

    global harness
    sys.path.insert(0, HARNESS)
    import run as harness  # the shared harness's Server (Kamailio config, SQLite schema), latency parsing

    rates = {k: float(v) for k, v in (p.split("=") for p in a.rates.split(",") if p)}
    scens = [s for s in a.scenarios.split(",") if s]
    for s in scens:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (A, B, C, E)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(HERE, "results", f"{stamp}-equal-rate-{a.storage}")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="equal-rate-")
    kam_name = "kamailio-sqlite" if a.storage == "sqlite" else "kamailio-mem"
    ours_cmd = _presenced_cmd(os.path.abspath(a.venv), a.storage, a.workers)
    ours_cmd += "".join(f" --set {x}" for x in a.sets)
    rows = []
    try:
        for scen in scens:
            rate = rates.get(scen, SCENARIOS[scen][2])
            for rep in range(a.repeat):
                for label in (kam_name, "presenced"):
                    wd = os.path.join(work, f"{label}-{scen}-{rep}")
                    os.makedirs(wd, exist_ok=True)
                    if label == "presenced":
                        srv = harness.Server("ours", _server_args(5060, ours_cmd, wd), wd)
                    else:
                        srv = harness.Server(kam_name, _server_args(5060, None, wd), wd, children=8)
                    rows.append(run_one(label, srv, scen, rate, a.seconds, os.path.join(wd, "sipp")))
                    if KEEP_SAMPLES:
                        shutil.copy(os.path.join(wd, "sipp", "latency_us.txt.gz"),
                                    os.path.join(out, f"{label}-{scen}-{rep}.latency_us.txt.gz"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    md = [f"# Server CPU per unit and latency at equal offered rates ({a.storage})", "",
          f"- date: {stamp}; host: {os.uname().nodename}, {os.cpu_count()} CPUs",
          f"- command: `python bench/equal_rate.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
          f"- presenced: `{ours_cmd}`",
          f"- Kamailio: the shared harness's `{kam_name}` (8 children); {a.repeat} interleaved runs of "
          f"{a.seconds:g} s per scenario; medians"
          + ("; server pinned to CPU 1, SIPp to CPU 0 (--split-cpus)" if SPLIT_CPUS else ""), "",
          "| scenario | rate (calls/s) | Kamailio µs/unit | presenced µs/unit | ratio | of which kernel µs Kamailio / presenced | "
          "p50 ms Kamailio / presenced | p99 ms Kamailio / presenced | p99 ratio | "
          "Kamailio failed calls | presenced failed calls | wake-ups per unit Kamailio / presenced | "
          "µs waiting for a CPU per unit Kamailio / presenced |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scen in scens:
        k = [r for r in rows if r["scenario"] == scen and r["server"] == kam_name]
        o = [r for r in rows if r["scenario"] == scen and r["server"] == "presenced"]
        km = statistics.median(r["cpu_us_per_unit"] or 0 for r in k)
        om = statistics.median(r["cpu_us_per_unit"] or 0 for r in o)
        lat = {}
        for q in ("p50_us", "p99_us"):
            kv = [r[q] for r in k if r.get(q) is not None]
            ov = [r[q] for r in o if r.get(q) is not None]
            lat[q] = (statistics.median(kv) / 1000 if kv else float("nan"),
                      statistics.median(ov) / 1000 if ov else float("nan"))
        p99r = lat["p99_us"][1] / lat["p99_us"][0] if lat["p99_us"][0] else float("nan")
        ks = statistics.median(r["sys_us_per_unit"] or 0 for r in k)
        os_ = statistics.median(r["sys_us_per_unit"] or 0 for r in o)
        md.append(f"| {scen} ({UNITS[scen]}) | {k[0]['rate']:g} | {km:,.0f} | {om:,.0f} | "
                  f"{om / km if km else float('nan'):.2f}x | {ks:,.0f} / {os_:,.0f} | {lat['p50_us'][0]:.2f} / {lat['p50_us'][1]:.2f} | "
                  f"{lat['p99_us'][0]:.2f} / {lat['p99_us'][1]:.2f} | {p99r:.2f}x | {sum(r['failed'] for r in k)} / {sum(r['calls'] for r in k)} | "
                  f"{sum(r['failed'] for r in o)} / {sum(r['calls'] for r in o)} | "
                  f"{_median_of(k, 'wakeups_per_unit')} / {_median_of(o, 'wakeups_per_unit')} | "
                  f"{_median_of(k, 'cpu_wait_us_per_unit')} / {_median_of(o, 'cpu_wait_us_per_unit')} |")
    md += ["", "p99 of each transaction SIPp logs (ms, Kamailio / presenced, medians of the runs; "
           "SIPp stamps the first request of a new call before its own scheduling delay):", "",
           "| scenario | first transaction | second | third | fourth |", "|---|---|---|---|---|"]
    for scen in scens:
        cells = []
        for tx in LATENCY[scen]:
            kv = [r["per_tx"][tx]["p99_us"] for r in rows if r["scenario"] == scen and r["server"] == kam_name
                  and r["per_tx"].get(tx, {}).get("p99_us") is not None]
            ov = [r["per_tx"][tx]["p99_us"] for r in rows if r["scenario"] == scen and r["server"] == "presenced"
                  and r["per_tx"].get(tx, {}).get("p99_us") is not None]
            if kv and ov:
                km_, om_ = statistics.median(kv) / 1000, statistics.median(ov) / 1000
                cells.append(f"{tx} {km_:.2f} / {om_:.2f} ({om_ / km_:.2f}x)")
            else:
                cells.append(f"{tx} -")
        cells += [""] * (4 - len(cells))
        md.append(f"| {scen} | " + " | ".join(cells) + " |")
    md += ["", "CPU = utime+stime of the server's process tree during the SIPp run (/proc, 10 ms ticks); kernel = stime.",
           "Latency = SIPp's <log> lines of the harness's scenarios, client side, medians of the runs' percentiles.",
           "A failed call is one SIPp counted as failed (e.g. Kamailio's 500 \"database is locked\").",
           "Wake-ups = voluntary context switches of the server's processes (/proc/PID/status) per unit: how often "
           "a process slept waiting for input, so fewer means more messages handled per wake-up.",
           "Waiting for a CPU = schedstat run delay of the server's processes per unit: time runnable but not running "
           "(another process, often SIPp after a wake-up pulled it onto the same core, had the CPU)."]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
