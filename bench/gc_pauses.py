#!/usr/bin/env python3
"""What CPython's cyclic garbage collector costs presenced under load.

Starts one presenced process (memory storage, one worker unless --workers)
with a `gc.callbacks` hook that times every collection, drives one of the
shared harness's SIPp scenarios at a fixed rate, and then reports, per
generation, how many collections ran, their total and longest pause, how
many objects a young collection found on average (every 20th one counted),
and how many objects sat in each generation at the end. Pauses are latency:
every request that arrives during one waits for it.

  python bench/gc_pauses.py                          # C at 1,400 dialogs/s, 30 s
  python bench/gc_pauses.py --scenario E --rate 600 --seconds 60
  python bench/gc_pauses.py --census                 # also: what a young collection finds, by type

Needs sipp (see `make bench`). Results: bench/results/<stamp>-gc-pauses/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.environ.get("PRESENCED_BENCH_HARNESS", os.path.join(ROOT, "..", "shared", "bench"))
PORT = 5060
SCENARIOS = {"A": "publish.xml", "B": "publish_cycle.xml", "C": "subscribe.xml", "E": "mwi.xml"}

# Runs inside each server process (workers are forked: the hook is inherited).
# On SIGUSR1 each process writes its figures to $GC_PAUSES_DIR/<pid>.json.
_HOOK = r'''
import collections, gc, json, os, signal, sys, time
pauses = collections.defaultdict(list)
found = [0, 0]
census = collections.Counter()
started = [0.0]
def hook(phase, info):
    if phase == "start":
        if info["generation"] == 0:
            found[0] += 1
            if found[0] % 20 == 0:
                objs = gc.get_objects(0)
                found[1] += len(objs)
                if os.environ.get("GC_PAUSES_CENSUS"):
                    census.update(type(o).__name__ for o in objs)
                del objs
        started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - started[0])
gc.callbacks.append(hook)
def dump(*_):
    sampled = max(1, found[0] // 20)
    out = {"pauses": pauses, "young_found": found[1] / sampled,
           "generations": [len(gc.get_objects(g)) for g in range(3)],
           "census": [(k, v / sampled) for k, v in census.most_common(12)]}
    with open(os.path.join(os.environ["GC_PAUSES_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(out, f)
signal.signal(signal.SIGUSR1, dump)
from presenced.cli import main
sys.argv = ["presenced"] + sys.argv[1:]
main()
'''


def _sipp(xml: str, rate: float, calls: int, cwd: str) -> None:
    cmd = ["sipp", "-sf", os.path.join(HARNESS, "scenarios", xml),
           "-inf", os.path.join(HARNESS, "data", "users.csv"), "-i", "127.0.0.1", "-p", "5061", "-cp", "5071",
           "-t", "u1", "-r", f"{rate:g}", "-m", str(calls), "-l", str(max(10, int(rate * 4))), "-nostdin",
           "-timeout", "300s", "-recv_timeout", "5000", "-default_behaviors", "all,-bye", "-aa",
           "-buff_size", "4194304", f"127.0.0.1:{PORT}"]
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="C", choices=sorted(SCENARIOS))
    ap.add_argument("--rate", type=float, default=1400.0, help="calls/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--census", action="store_true", help="count what young collections find, by type")
    ap.add_argument("--venv", default=os.environ.get("VENV", os.path.join(ROOT, ".venv")))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(HERE, "results", f"{stamp}-gc-pauses")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gc-pauses-")
    py = os.path.join(a.venv, "bin", "python")
    env = {**os.environ, "GC_PAUSES_DIR": work}
    if a.census:
        env["GC_PAUSES_CENSUS"] = "1"
    srv = subprocess.Popen([py, "-c", _HOOK, "serve", "--listen", f"udp:127.0.0.1:{PORT}", "--db-url", "memory",
                            "--log-level", "warning", "--set", "presence_xml.force_active=1",
                            "--workers", str(a.workers)], env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        _sipp(SCENARIOS[a.scenario], a.rate, int(a.rate * a.seconds), work)
        for pid in [srv.pid] + _children(srv.pid):
            os.kill(pid, signal.SIGUSR1)
        time.sleep(1.0)
    finally:
        srv.terminate()
        srv.wait()
    procs = [json.load(open(p)) for p in glob.glob(os.path.join(work, "*.json"))]
    procs = [p for p in procs if sum(len(v) for v in p["pauses"].values()) > 0]
    if a.workers > 1:  # the supervisor does no SIP work
        procs = sorted(procs, key=lambda p: -sum(len(v) for v in p["pauses"].values()))[:a.workers]
    md = [f"# GC pauses: scenario {a.scenario} at {a.rate:g}/s for {a.seconds:g} s (memory storage, "
          f"{a.workers} worker{'s' if a.workers > 1 else ''})", "",
          f"- date: {stamp}; host: {os.uname().nodename}, {os.cpu_count()} CPUs",
          f"- command: `python bench/gc_pauses.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
          "| process | generation | collections | total ms | longest ms | p99 ms |", "|---|---|---|---|---|---|"]
    for i, p in enumerate(procs):
        for gen in sorted(p["pauses"]):
            v = sorted(p["pauses"][gen])
            md.append(f"| {i} | {gen} | {len(v)} | {sum(v) * 1e3:.0f} | {v[-1] * 1e3:.2f} | "
                      f"{v[min(len(v) - 1, int(len(v) * 0.99))] * 1e3:.2f} |")
    md += ["", "| process | objects a young collection finds (mean of every 20th) | objects per generation at the end (young, middle, old) |",
           "|---|---|---|"]
    for i, p in enumerate(procs):
        md.append(f"| {i} | {p['young_found']:.0f} | {', '.join(f'{n:,}' for n in p['generations'])} |")
    if a.census:
        md += ["", "What a young collection finds, by type (mean per collection, process 0):", ""]
        md += [f"- {name}: {n:.0f}" for name, n in (procs[0]["census"] if procs else [])]
    md += ["", "Objects frozen at start-up (gc.freeze) are in none of the generations."]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
