#!/usr/bin/env python3
"""Where a PUBLISH's time goes at low and high rates (the cache-cold path).

At low offered rates every request is a wake-up from idle: the interpreter's
code and objects are no longer in the CPU caches, and each request costs
several times what it costs under load. This script shows by how much, stage
by stage: it starts one presenced process (memory storage) with timers
wrapped around the runtime's per-datagram entry point
(`UdpListener.datagram_received`), the send step (`Server._flush`: 200 OK out,
timer re-armed) and PIDF validation (`PresencePackage.validate`), drives the
shared harness's scenario A (`publish.xml`) with SIPp at each rate, and
prints the mean thread CPU time per call of each stage (with `--storage
sqlite` also the write-through commit, `Persistence._commit_soon`, which sends
the held 200 OK after it). As a floor it also times a
uvloop UDP responder's CPU per datagram at the lowest rate (it copies the
headers a 200 OK needs and nothing else).

  python bench/cold_path.py                     # rates 40, 400, 3000 PUBLISH/s
  python bench/cold_path.py --rates 80,2000 --seconds 10
  python bench/cold_path.py --storage sqlite --rates 80,2000   # SQLite write-back, as bench/equal_rate.py

Needs sipp (see `make bench`). Results: bench/results/<stamp>-cold-path/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
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

# Runs inside the server process: wrap the stages, dump the means on SIGUSR1.
_WRAPPER = r'''
import os, signal, sys, time
from presenced.transport import udp
from presenced.runtime import server as rs
from presenced.events import presence as pp
from presenced.runtime import persistence as pe
stats = {}
def wrap(owner, name, key):
    fn = getattr(owner, name)
    def timed(*a, **k):
        t = time.thread_time_ns()
        try:
            return fn(*a, **k)
        finally:
            s = stats.setdefault(key, [0, 0]); s[0] += 1; s[1] += time.thread_time_ns() - t
    setattr(owner, name, timed)
wrap(udp.UdpListener, "datagram_received", "datagram")
wrap(rs.Server, "_flush", "send")
wrap(pp.PresencePackage, "validate", "pidf")
wrap(pe.Persistence, "_commit_soon", "commit")
def dump(*_):
    with open(os.environ["COLD_PATH_OUT"], "w") as f:
        for k, (n, ns) in stats.items():
            f.write(f"{k} {n} {ns}\n")
    stats.clear()
signal.signal(signal.SIGUSR1, dump)
from presenced.cli import main
sys.argv = ["presenced"] + sys.argv[1:]
main()
'''

_ECHO = r'''
import asyncio, uvloop
KEEP = (b"via", b"from", b"to", b"call-id", b"cseq")
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a):
        lines = d.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        keep = [l for l in lines if l.split(b":", 1)[0].strip().lower() in KEEP]
        self.t.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", a)
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("127.0.0.1", %d))
    await asyncio.Event().wait()
uvloop.run(main())
'''


def _sipp(rate: float, calls: int, cwd: str) -> None:
    cmd = ["sipp", "-sf", os.path.join(HARNESS, "scenarios", "publish.xml"),
           "-inf", os.path.join(HARNESS, "data", "users.csv"), "-i", "127.0.0.1", "-p", "5061", "-cp", "5071",
           "-t", "u1", "-r", f"{rate:g}", "-m", str(calls), "-l", str(max(10, int(rate * 4))), "-nostdin",
           "-timeout", "120s", "-default_behaviors", "all,-bye", "-aa", f"127.0.0.1:{PORT}"]
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="40,400,3000", help="PUBLISH/s, comma list")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--storage", choices=("memory", "sqlite"), default="memory")
    ap.add_argument("--venv", default=os.environ.get("VENV", os.path.join(ROOT, ".venv")))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rates = [float(r) for r in a.rates.split(",") if r]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(HERE, "results", f"{stamp}-cold-path")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cold-path-")
    py = os.path.join(a.venv, "bin", "python")
    dump = os.path.join(work, "stages.txt")
    rows = []
    if a.storage == "sqlite":  # the write-back shape of bench/equal_rate.py and `BENCH_STORAGE=sqlite make bench`
        db = ["--db-url", f"sqlite://{work}/presenced.sqlite", "--set", "presence.subs_db_mode=2",
              "--set", "presence.publ_cache=1", "--set", "presence.db_update_period=10"]
    else:
        db = ["--db-url", "memory"]
    srv = subprocess.Popen([py, "-c", _WRAPPER, "serve", "--listen", f"udp:127.0.0.1:{PORT}", *db,
                            "--log-level", "warning", "--set", "presence_xml.force_active=1"],
                           env={**os.environ, "COLD_PATH_OUT": dump}, stdout=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        for rate in rates:
            calls = max(50, int(rate * a.seconds))
            c0 = _cpu_ns(srv.pid)
            _sipp(rate, calls, work)
            cpu = (_cpu_ns(srv.pid) - c0) / calls / 1000
            srv.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            stages = {}
            with open(dump) as f:
                for line in f:
                    k, n, ns = line.split()
                    stages[k] = int(ns) / calls / 1000  # per PUBLISH (a commit may cover several)
            rows.append((rate, cpu, stages))
            print(f"{rate:g}/s: CPU {cpu:.0f} us/PUBLISH; " + ", ".join(f"{k} {v:.1f} us" for k, v in stages.items()),
                  flush=True)
    finally:
        srv.terminate()
        srv.wait()
    echo = subprocess.Popen([py, "-c", _ECHO % PORT], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        calls = max(50, int(rates[0] * a.seconds))
        c0 = _cpu_ns(echo.pid)
        _sipp(rates[0], calls, work)
        echo_cpu = (_cpu_ns(echo.pid) - c0) / calls / 1000
    finally:
        echo.terminate()
        echo.wait()
    md = [f"# Cold path: a PUBLISH's cost by offered rate (one process, {a.storage} storage)", "",
          f"- date: {stamp}; host: {os.uname().nodename}, {os.cpu_count()} CPUs",
          f"- command: `python bench/cold_path.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
          "| PUBLISH/s | server CPU µs/PUBLISH | in datagram_received µs | of which send (_flush) µs | "
          "of which PIDF validation µs | commit after the pass µs |", "|---|---|---|---|---|---|"]
    for rate, cpu, st in rows:
        md.append(f"| {rate:g} | {cpu:.0f} | {st.get('datagram', 0):.0f} | {st.get('send', 0):.0f} | "
                  f"{st.get('pidf', 0):.0f} | {st.get('commit', 0):.0f} |")
    md += ["", f"A minimal uvloop UDP responder (copies Via/From/To/Call-ID/CSeq into a 200 OK) at {rates[0]:g} datagrams/s: {echo_cpu:.0f} µs CPU per datagram.",
           "Stage times are means per PUBLISH of the thread's CPU time inside each call (time.thread_time_ns around it, its own cost included); "
           "the commit runs after the datagram's pass and sends the held reply (memory storage: none)."]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
