#!/usr/bin/env python3
"""Instructions per operation of a bench/micro.py benchmark, under callgrind.

Wall-clock timings on a shared 2-core VM move by ±30%; instruction counts
do not. Each benchmark runs twice in a fresh interpreter under
`valgrind --tool=callgrind`, with N and 2N operations, and the difference
divided by N is the cost of one operation with start-up and setup cancelled
out (setup that grows with N, e.g. pre-built datagrams, is included).

  python bench/instructions.py                         # every core benchmark
  python bench/instructions.py --only "PUBLISH initial" -n 2000
  python bench/instructions.py --json instr.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = {
    "parse PUBLISH": 4000,
    "parse+check PUBLISH": 2000,
    "parse NOTIFY 200": 2000,
    "validate PIDF": 2000,
    "validate summary": 2000,
    "core OPTIONS": 1000,
    "core PUBLISH initial": 1000,
    "core PUBLISH refresh": 1000,
    "core SUBSCRIBE": 1000,
    "core MWI cycle": 300,
}

_CHILD = """
import sys, gc
sys.path.insert(0, {here!r})
import micro
name, n = sys.argv[1], int(sys.argv[2])
fn = dict((b[0], b[1]) for b in micro.BENCHES)[name]
gc.collect()
fn(n)
"""


def instructions(name: str, n: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, "-c", _CHILD.format(here=HERE), name, str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise SystemExit(f"{name}: callgrind failed:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=None)
    ap.add_argument("-n", type=int, default=None, help="operations in the smaller run (default per benchmark)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for name, n_default in DEFAULTS.items():
        if a.only and not any(o.lower() in name.lower() for o in a.only):
            continue
        n = a.n or n_default
        small, big = instructions(name, n), instructions(name, 2 * n)
        per_op = (big - small) / n
        rows.append({"name": name, "n": n, "instructions_per_op": round(per_op)})
        print(f"| {name} | {n} | {per_op / 1e3:,.1f} k |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
