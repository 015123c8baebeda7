#!/usr/bin/env python3
"""State memory: what holding N publications and N subscriptions costs.

For each server (Kamailio 5.6 memory-only with the shared harness's
presence.cfg, presenced --db-url memory, optionally presenced with SQLite
write-back) this script

1. starts the server on 127.0.0.1:PORT (UDP), waits for it to answer OPTIONS
   and samples its baseline memory (PSS and RSS summed over the whole process
   tree, from /proc/PID/smaps_rollup);
2. in two halves: PUBLISHes presence (PIDF, ~300 bytes, Expires 3600) for
   distinct presentities userI@127.0.0.1, then SUBSCRIBEs (presence, Expires
   3600) from distinct watchers watcherI@127.0.0.1 to userI, each with a
   Contact pointing at the generator, which answers every NOTIFY with 200;
   after each half it waits for the server to settle and samples memory
   again (the second half's growth is the marginal cost per record, with the
   transient transaction memory already at its high-water mark);
3. checks the state: every request must get 200/202, every subscription its
   initial NOTIFY; then, after the last sample, fetch SUBSCRIBEs (Expires 0)
   for a sample of presentities must return the published tuple and a PUBLISH
   to a sample of presentities must NOTIFY their watcher; for Kamailio also
   `kamcmd core.shmmem` (its own shm accounting);
4. stops the server (SIGTERM, then SIGKILL of the tree, by PID).

The load generator is one asyncio UDP socket in this process: windowed
sending at a fixed rate (at most --window requests in flight), RFC 3261
retransmission (T1 500 ms doubling, 32 s timeout), every response and NOTIFY
counted.

    make bench-memory                                # Kamailio, presenced, presenced+SQLite, 100k+100k
    .venv/bin/python bench/state_memory.py --servers kamailio,presenced --records 20000
    .venv/bin/python bench/state_memory.py --help

Results: bench/results/<stamp>-state-memory/RESULTS.md and results.json;
server logs in bench/runs/<stamp>-state-memory/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HARNESS = os.path.join(os.path.dirname(ROOT), "shared", "bench")
HOST = "127.0.0.1"

_started: dict[int, subprocess.Popen] = {}


# ------------------------------------------------------------------ /proc
def descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_mem(root: int) -> dict:
    """PSS, RSS, Private (clean+dirty) summed over root and its descendants, in kB."""
    pids = [root] + descendants(root)
    tot = {"pss_kb": 0, "rss_kb": 0, "private_kb": 0, "processes": 0}
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                vals = {}
                for ln in f:
                    parts = ln.split()
                    if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                        vals[parts[0][:-1]] = int(parts[1])
        except OSError:
            continue
        tot["pss_kb"] += vals.get("Pss", 0)
        tot["rss_kb"] += vals.get("Rss", 0)
        tot["private_kb"] += vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)
        tot["processes"] += 1
    return tot


def tree_cpu(root: int) -> float:
    tot = 0.0
    for p in [root] + descendants(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fs = st[st.rindex(")") + 2:].split()
            tot += (int(fs[11]) + int(fs[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return tot


def kill_tree(pid: int, grace: float = 5.0) -> None:
    tree = descendants(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.time() + grace
    proc = _started.get(pid)
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    for p in [pid] + tree:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc is not None:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    _started.pop(pid, None)


def cleanup() -> None:
    for pid in list(_started):
        kill_tree(pid, grace=2.0)


# ------------------------------------------------------------------ SIP generator
_RE_CALLID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)
_RE_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*(\d+)[ \t]+(\w+)", re.I | re.M)
_RE_KEEP = re.compile(rb"^(?:via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[^\r\n]*", re.I | re.M)


def pidf(user: str, note: str = "state-memory bench") -> bytes:
    entity = f"sip:{user}@{HOST}"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">\r\n'
        f'<tuple id="t-{user}"><status><basic>open</basic></status>'
        f"<contact priority=\"0.8\">{entity}</contact>"
        f"<note>{note}</note></tuple>\r\n"
        "</presence>\r\n"
    )
    return body.encode()


class Request:
    __slots__ = ("key", "data", "sent_at", "next_at", "interval", "tries", "kind", "done_status")

    def __init__(self, key: bytes, data: bytes, kind: str) -> None:
        self.key, self.data, self.kind = key, data, kind
        self.sent_at = self.next_at = 0.0
        self.interval = 0.5
        self.tries = 0
        self.done_status = 0


class Generator(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int], lport: int, run_id: str) -> None:
        self.server, self.lport, self.run_id = server, lport, run_id
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[bytes, Request] = {}  # (call-id + b' ' + cseq-method) -> request
        self.stats: dict[str, int] = {}
        self.status_counts: dict[str, dict[str, int]] = {}
        self.failures: list[str] = []
        self.notifies: dict[bytes, int] = {}          # call-id -> NOTIFYs (distinct CSeq)
        self.notify_seen: set[tuple[bytes, bytes]] = set()
        self.notify_bodies: dict[bytes, bytes] = {}    # call-id -> last NOTIFY body (probe dialogs only)
        self.watch_bodies: set[bytes] = set()
        self.responses: dict[bytes, bytes] = {}        # probe call-id -> To header of the 2xx
        self.idle = asyncio.Event()
        self.idle.set()

    def bump(self, k: str, n: int = 1) -> None:
        self.stats[k] = self.stats.get(k, 0) + n

    # --- asyncio protocol ---
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
            except OSError:
                pass

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if data.startswith(b"SIP/2.0 "):
            self._response(data)
        elif data.startswith(b"NOTIFY "):
            self._notify(data, addr)
        elif data.strip():
            self.bump("unexpected_requests")

    def error_received(self, exc) -> None:  # type: ignore[override]
        self.bump("socket_errors")

    def _response(self, data: bytes) -> None:
        code = int(data[8:11])
        m1, m2 = _RE_CALLID.search(data), _RE_CSEQ.search(data)
        if not m1 or not m2:
            self.bump("unparsable_responses")
            return
        key = m1.group(1) + b" " + m2.group(2).upper()
        req = self.pending.get(key)
        if req is None:
            if code >= 200:
                self.bump("late_or_duplicate_responses")
            return
        if code < 200:
            req.next_at = time.monotonic() + 4.0  # provisional: stop retransmitting at T1 pace
            return
        del self.pending[key]
        if not self.pending:
            self.idle.set()
        per = self.status_counts.setdefault(req.kind, {})
        per[str(code)] = per.get(str(code), 0) + 1
        if code in (200, 202):
            self.bump(req.kind + "_ok")
            if req.kind.startswith("probe"):
                self.responses[m1.group(1)] = data
        else:
            self.bump(req.kind + "_failed")
            if len(self.failures) < 20:
                first = data.split(b"\r\n", 1)[0].decode(errors="replace")
                self.failures.append(f"{req.kind} {key.decode(errors='replace')}: {first}")

    def _notify(self, data: bytes, addr) -> None:
        m1, m2 = _RE_CALLID.search(data), _RE_CSEQ.search(data)
        head, _, body = data.partition(b"\r\n\r\n")
        keep = b"\r\n".join(_RE_KEEP.findall(head))
        resp = b"SIP/2.0 200 OK\r\n" + keep + b"\r\nContent-Length: 0\r\n\r\n"
        assert self.transport is not None
        self.transport.sendto(resp, addr)
        if not m1 or not m2:
            self.bump("unparsable_notifies")
            return
        cid, cseq = m1.group(1), m2.group(1)
        k = (cid, cseq)
        if k in self.notify_seen:
            self.bump("notify_retransmissions")
            return
        self.notify_seen.add(k)
        self.bump("notifies")
        self.notifies[cid] = self.notifies.get(cid, 0) + 1
        if cid.startswith(b"probe-") or cid in self.watch_bodies:
            self.notify_bodies[cid] = body

    # --- sending ---
    def _send(self, req: Request) -> None:
        assert self.transport is not None
        now = time.monotonic()
        if req.tries == 0:
            req.sent_at = now
        req.tries += 1
        req.next_at = now + req.interval
        self.transport.sendto(req.data, self.server)

    async def retransmitter(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for key, req in list(self.pending.items()):
                if req.next_at > now:
                    continue
                if now - req.sent_at > 32.0:
                    del self.pending[key]
                    self.bump(req.kind + "_failed")
                    self.bump(req.kind + "_timeout")
                    if len(self.failures) < 20:
                        self.failures.append(f"{req.kind} {key.decode(errors='replace')}: timeout")
                    if not self.pending:
                        self.idle.set()
                    continue
                req.interval = min(req.interval * 2, 4.0)
                self.bump("retransmissions")
                self._send(req)

    def submit(self, req: Request) -> None:
        self.pending[req.key] = req
        self.idle.clear()
        self.bump(req.kind + "_sent")
        self._send(req)

    async def run_batch(self, reqs, rate: float, window: int) -> float:
        """Send the requests at `rate`/s with at most `window` outstanding; wait for all answers."""
        t0 = time.monotonic()
        n = 0
        it = iter(reqs)
        exhausted = False
        while not exhausted:
            due = int((time.monotonic() - t0) * rate) + 1
            while n < due and len(self.pending) < window:
                req = next(it, None)
                if req is None:
                    exhausted = True
                    break
                self.submit(req)
                n += 1
            await asyncio.sleep(0.002)
        await self.idle.wait()
        return n / max(time.monotonic() - t0, 1e-9)

    # --- messages ---
    def publish(self, i: int, tag: str = "p", note: str = "state-memory bench") -> Request:
        user = f"user{i}"
        body = pidf(user, note)
        cid = f"{tag}{i}-{self.run_id}@{HOST}"
        msg = (
            f"PUBLISH sip:{user}@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.lport};branch=z9hG4bK-{tag}{i}-{self.run_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{HOST}>;tag={tag}f{i}\r\n"
            f"To: <sip:{user}@{HOST}>\r\n"
            f"Call-ID: {cid}\r\n"
            "CSeq: 1 PUBLISH\r\n"
            "Event: presence\r\n"
            "Expires: 3600\r\n"
            "Content-Type: application/pidf+xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return Request(cid.encode() + b" PUBLISH", msg, "publish" if tag == "p" else "probe_publish")

    def subscribe(self, i: int, target: int, expires: int = 3600, tag: str = "s") -> Request:
        cid = f"{tag}{i}-{self.run_id}@{HOST}"
        if tag != "s":
            cid = f"probe-{cid}"
        watcher = f"watcher{i}" if tag == "s" else f"probe{i}"
        msg = (
            f"SUBSCRIBE sip:user{target}@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.lport};branch=z9hG4bK-{tag}{i}-{self.run_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{watcher}@{HOST}>;tag={tag}f{i}\r\n"
            f"To: <sip:user{target}@{HOST}>\r\n"
            f"Call-ID: {cid}\r\n"
            "CSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:{watcher}@{HOST}:{self.lport}>\r\n"
            "Event: presence\r\n"
            "Accept: application/pidf+xml\r\n"
            f"Expires: {expires}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        return Request(cid.encode() + b" SUBSCRIBE", msg, "subscribe" if tag == "s" else "probe_subscribe")

    def options(self, i: int) -> Request:
        cid = f"o{i}-{self.run_id}@{HOST}"
        msg = (
            f"OPTIONS sip:{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.lport};branch=z9hG4bK-o{i}-{self.run_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bench@{HOST}>;tag=o{i}\r\n"
            f"To: <sip:{HOST}>\r\n"
            f"Call-ID: {cid}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        return Request(cid.encode() + b" OPTIONS", msg, "options")


def wait_ready(port: int, lport: int, timeout: float = 20.0) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, lport))
    s.settimeout(0.2)
    end = time.time() + timeout
    i = 0
    try:
        while time.time() < end:
            i += 1
            msg = (
                f"OPTIONS sip:{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK-ready{i}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:ready@{HOST}>;tag=r{i}\r\nTo: <sip:{HOST}>\r\n"
                f"Call-ID: ready{i}-{time.time()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            s.sendto(msg, (HOST, port))
            try:
                data, _ = s.recvfrom(65535)
                if data.startswith(b"SIP/2.0 "):
                    return True
            except (socket.timeout, ConnectionRefusedError):
                time.sleep(0.1)
    finally:
        s.close()
    return False


# ------------------------------------------------------------------ servers
def server_command(name: str, a, workdir: str) -> tuple[list[str], str]:
    if name == "kamailio":
        cfg = os.path.join(a.harness, "kamailio", "presence.cfg")
        cmd = [a.kamailio_bin, "-f", cfg, "-DD", "-E", "--atexit=no", "-m", str(a.shm), "-M", str(a.pkg),
               "-l", f"udp:{HOST}:{a.port}", "-n", str(a.children),
               "-P", os.path.join(workdir, "kamailio.pid"), "-Y", workdir, "-w", workdir]
        if a.kamcmd:
            # ctl (binrpc) only so that `kamcmd core.shmmem` can read Kamailio's own accounting
            cmd += ["--loadmodule=ctl.so", f"--modparam=ctl:binrpc:s:unix:{workdir}/kamailio_ctl"]
        return cmd, workdir
    presenced = os.path.join(a.venv, "bin", "presenced")
    cmd = [presenced, "serve", "--listen", f"udp:{HOST}:{a.port}", "--log-level", "warning",
           "--set", "presence_xml.force_active=1", "--workers", str(a.workers)]
    if name == "presenced":
        cmd += ["--db-url", "memory"]
    elif name == "presenced-sqlite":
        cmd += ["--db-url", "sqlite://" + os.path.join(workdir, "presence.sqlite"),
                "--set", "presence.subs_db_mode=2", "--set", "presence.publ_cache=1",
                "--set", "presence.db_update_period=5"]
    else:
        raise SystemExit(f"unknown server {name}")
    return cmd, ROOT


def kamcmd(a, workdir: str, *args: str, timeout: float = 60.0) -> str:
    try:
        out = subprocess.run(["kamcmd", "-s", f"unix:{workdir}/kamailio_ctl", *args],
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"kamcmd failed: {e}"


def parse_shmmem(text: str) -> dict:
    d = {}
    for ln in text.splitlines():
        parts = ln.replace(":", " ").split()
        if len(parts) == 2 and parts[1].isdigit():
            d[parts[0]] = int(parts[1])
    return d


# ------------------------------------------------------------------ one server
async def run_server(name: str, a, rundir: str) -> dict:
    workdir = os.path.join(rundir, name)
    os.makedirs(workdir, exist_ok=True)
    cmd, cwd = server_command(name, a, workdir)
    log = open(os.path.join(workdir, "server.log"), "ab")
    log.write(("# " + " ".join(shlex.quote(x) for x in cmd) + "\n").encode())
    log.flush()
    res: dict = {"server": name, "command": " ".join(shlex.quote(x) for x in cmd), "samples": {}}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    _started[proc.pid] = proc
    print(f"== {name}: pid {proc.pid}: {res['command']}", flush=True)
    try:
        if not wait_ready(a.port, a.client_port + 1):
            raise RuntimeError(f"{name} did not answer OPTIONS on {HOST}:{a.port}; see {log.name}")
        await asyncio.sleep(2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {log.name}")

        def sample(label: str) -> dict:
            if a.signal_on_sample and name != "kamailio":
                # e.g. a tracemalloc wrapper that dumps a snapshot on SIGUSR2 (see --help)
                os.kill(proc.pid, getattr(signal, "SIG" + a.signal_on_sample))
                time.sleep(a.signal_wait)
            m = tree_mem(proc.pid)
            m["t"] = round(time.time() - t_start, 1)
            m["cpu_s"] = round(tree_cpu(proc.pid), 2)
            if name == "kamailio" and a.kamcmd:
                m["shmmem"] = parse_shmmem(kamcmd(a, workdir, "core.shmmem"))
            res["samples"][label] = m
            print(f"   {label}: PSS {m['pss_kb'] / 1024:.1f} MB, RSS {m['rss_kb'] / 1024:.1f} MB, "
                  f"{m['processes']} processes" + (f", shm {m['shmmem']}" if m.get("shmmem") else ""), flush=True)
            return m

        async def settle(label: str) -> None:
            """Wait settle_s, recording PSS once a second (res['series'])."""
            series = res.setdefault("series", {}).setdefault(label, [])
            t0 = time.time()
            while True:
                series.append([round(time.time() - t0, 1), tree_mem(proc.pid)["pss_kb"]])
                if time.time() - t0 >= settle_s:
                    break
                await asyncio.sleep(min(1.0, settle_s - (time.time() - t0)))

        # Transactions outlive their final response: Kamailio's tm keeps one for its
        # wait timer (5 s), presenced a UDP server transaction for Timer J (64*T1 =
        # 32 s).  Wait past that unless --settle says otherwise.
        settle_s = a.settle if a.settle is not None else (8.0 if name == "kamailio" else 35.0)
        res["settle_s"] = settle_s
        t_start = time.time()
        sample("baseline")
        loop = asyncio.get_running_loop()
        run_id = f"{int(time.time()) % 100000}{random.randint(0, 999)}"
        transport, gen = await loop.create_datagram_endpoint(
            lambda: Generator((HOST, a.port), a.client_port, run_id), local_addr=(HOST, a.client_port))
        rtx = loop.create_task(gen.retransmitter())
        phases = []
        try:
            n = a.records
            halves = [(1, n // 2), (n // 2 + 1, n)]
            for h, (lo, hi) in enumerate(halves, 1):
                t0 = time.time()
                got_pub = await gen.run_batch((gen.publish(i) for i in range(lo, hi + 1)), a.rate, a.window)
                t1 = time.time()
                got_sub = await gen.run_batch((gen.subscribe(i, i) for i in range(lo, hi + 1)), a.rate, a.window)
                t2 = time.time()
                # initial NOTIFYs may trail the 2xx
                end = time.time() + 10
                while time.time() < end and len(gen.notifies) < hi:
                    await asyncio.sleep(0.1)
                phases.append({"half": h, "range": [lo, hi], "publish_rate": round(got_pub), "subscribe_rate": round(got_sub),
                               "publish_s": round(t1 - t0, 1), "subscribe_s": round(t2 - t1, 1)})
                print(f"   half {h}: {hi - lo + 1} PUBLISH at {got_pub:.0f}/s, {hi - lo + 1} SUBSCRIBE at "
                      f"{got_sub:.0f}/s; stats {gen.stats}", flush=True)
                await settle(f"half{h}")
                sample(f"after_half{h}")
            res["phases"] = phases
            res["stats_before_probe"] = dict(gen.stats)
            res["subscriptions_with_notify"] = sum(1 for c in gen.notifies if not c.startswith(b"probe-"))
            # --- probes (after the last memory sample) ---
            k = min(a.probe, n)
            sample_ids = random.Random(7).sample(range(1, n + 1), k)
            # fetch SUBSCRIBE (Expires 0): the NOTIFY must carry the published tuple
            await gen.run_batch((gen.subscribe(i, i, expires=0, tag="f") for i in sample_ids), 200, 50)
            await asyncio.sleep(1.0)
            fetch_ok = sum(1 for i in sample_ids
                           if f"t-user{i}".encode() in gen.notify_bodies.get(f"probe-f{i}-{run_id}@{HOST}".encode(), b""))
            # a new publication must reach the watcher's dialog
            before = {i: gen.notifies.get(f"s{i}-{run_id}@{HOST}".encode(), 0) for i in sample_ids}
            await gen.run_batch((gen.publish(i, tag="q", note="probe update") for i in sample_ids), 200, 50)
            await asyncio.sleep(1.5)
            watch_ok = sum(1 for i in sample_ids if gen.notifies.get(f"s{i}-{run_id}@{HOST}".encode(), 0) > before[i])
            res["probe"] = {"sampled": k, "fetch_notify_has_tuple": fetch_ok, "watcher_notified_on_publish": watch_ok}
            print(f"   probe: {fetch_ok}/{k} fetch NOTIFYs carry the tuple, {watch_ok}/{k} watchers notified", flush=True)
            if name == "kamailio" and a.kamcmd and a.kamcmd_lists:
                pl = kamcmd(a, workdir, "presence.presentity_list", timeout=120)
                res["kamcmd_presentity_list_entries"] = pl.count("pres_uri")
                wl = kamcmd(a, workdir, "presence.watcher_list", "presence", timeout=120)
                res["kamcmd_watcher_list_head"] = wl[:300]
        finally:
            rtx.cancel()
            transport.close()
        res["stats"] = dict(gen.stats)
        res["status_counts"] = gen.status_counts
        res["failure_examples"] = gen.failures
        res["notifies_per_subscription_max"] = max((v for c, v in gen.notifies.items() if not c.startswith(b"probe-")),
                                                   default=0)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during the run; see {log.name}")
    finally:
        kill_tree(proc.pid)
        log.close()
    st = res["stats"]
    res["failures"] = st.get("publish_failed", 0) + st.get("subscribe_failed", 0)
    b, h1, h2 = (res["samples"][k] for k in ("baseline", "after_half1", "after_half2"))
    n = a.records
    res["state_pss_kb"] = h2["pss_kb"] - b["pss_kb"]
    res["state_rss_kb"] = h2["rss_kb"] - b["rss_kb"]
    res["bytes_per_record_pair"] = res["state_pss_kb"] * 1024 / n        # one publication + one subscription
    half = n - n // 2
    res["marginal_pss_kb"] = h2["pss_kb"] - h1["pss_kb"]
    res["marginal_bytes_per_record_pair"] = res["marginal_pss_kb"] * 1024 / half
    return res


# ------------------------------------------------------------------ report
def machine_info(a) -> dict:
    info = {"hostname": platform.node(), "kernel": platform.release(), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    info["cpu"] = ln.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        info["kamailio"] = subprocess.run([a.kamailio_bin, "-v"], capture_output=True, text=True,
                                          timeout=5).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["kamailio"] = "?"
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               cwd=ROOT).stdout.strip()
        if dirty:
            info["git"] += " (src modified)"
    except OSError:
        pass
    try:
        la = os.getloadavg()
        info["loadavg_at_start"] = [round(x, 2) for x in la]
    except OSError:
        pass
    return info


def mb(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


def render(meta: dict, results: list[dict]) -> str:
    a = meta["args"]
    L = [f"# State memory: {a['records']:,} publications + {a['records']:,} subscriptions", ""]
    L.append(f"- date: {meta['date']}; machine: {meta['machine'].get('cpu')}, {meta['machine'].get('cpus')} CPUs, "
             f"{int(meta['machine'].get('mem_total_kb', 0)) // 1024:,} MB RAM, kernel {meta['machine'].get('kernel')}, "
             f"load average at start {meta['machine'].get('loadavg_at_start')} (shared machine)")
    L.append(f"- {meta['machine'].get('kamailio')}; presenced git {meta['machine'].get('git')}, "
             f"Python {meta['machine'].get('python')}")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- load: UDP, {a['rate']:,} requests/s offered, at most {a['window']} in flight, in two halves "
             "(PUBLISH 1..N/2, SUBSCRIBE 1..N/2 to the same presentities, settle, sample; then N/2+1..N, settle, "
             "sample); settle before each sample: "
             + (f"{a['settle']} s" if a.get("settle") is not None else
                "Kamailio 8 s (tm wait timer 5 s + 3), presenced 35 s (UDP Timer J 32 s + 3)")
             + "; every NOTIFY answered 200 by the generator")
    L.append("")
    base = next((r for r in results if r["server"] == "kamailio" and "error" not in r), None)
    L.append("| server | processes | baseline PSS MB | after PSS MB | state PSS MB | bytes per pub+sub | "
             "marginal bytes per pub+sub (2nd half) | baseline / after RSS-sum MB | failures | NOTIFYs (subs with initial NOTIFY) | ratio vs Kamailio (state PSS) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            L.append(f"| {r['server']} | error: {r['error']} |||||||||")
            continue
        s = r["samples"]
        b, h2 = s["baseline"], s["after_half2"]
        ratio = "" if not base or r is base else f"{r['state_pss_kb'] / max(base['state_pss_kb'], 1):.2f}×"
        st = r["stats"]
        L.append(f"| {r['server']} | {h2['processes']} | {mb(b['pss_kb'])} | {mb(h2['pss_kb'])} | "
                 f"**{mb(r['state_pss_kb'])}** | **{r['bytes_per_record_pair']:,.0f}** | {r['marginal_bytes_per_record_pair']:,.0f} | "
                 f"{mb(b['rss_kb'])} / {mb(h2['rss_kb'])} | {r['failures']} | "
                 f"{st.get('notifies', 0):,} ({r['subscriptions_with_notify']:,}) | {ratio} |")
    L.append("")
    L.append("Bytes per pub+sub = (PSS after − PSS at baseline) / N: one publication and one subscription "
             "together. Marginal = (PSS after the 2nd half − PSS after the 1st half) / (N/2). Ratio = "
             "state PSS of the server / state PSS of Kamailio.")
    L.append("")
    if base is not None and base["samples"]["baseline"].get("shmmem") and base["samples"]["after_half2"].get("shmmem"):
        s0, s1 = base["samples"]["baseline"]["shmmem"], base["samples"]["after_half2"]["shmmem"]
        ru = s1.get("real_used", 0) - s0.get("real_used", 0)
        L.append(f"Kamailio's own shm accounting (`kamcmd core.shmmem`, ctl.so loaded for this): real_used grew by "
                 f"{ru / 1048576:,.1f} MB = {ru / a['records']:,.0f} bytes per pub+sub (live allocations incl. "
                 f"allocator overhead), while max_used reached {s1.get('max_used', 0) / 1048576:,.1f} MB. "
                 "The difference is shm that tm transactions (5 s wait timer after the final reply, NOTIFY UAC "
                 "transactions) touched and freed again: q_malloc keeps it, so it stays in PSS. "
                 "By that accounting the ratio would be "
                 + ", ".join(f"{r['server']} {r['state_pss_kb'] * 1024 / max(ru, 1):.2f}×" for r in results
                             if r is not base and "error" not in r) + " (presenced's PSS against Kamailio's live shm).")
        L.append("")
    L.append("## Details")
    L.append("")
    for r in results:
        L.append(f"### {r['server']}")
        L.append("")
        L.append(f"`{r.get('command', '')}`")
        L.append("")
        if "error" in r:
            L.append(f"error: {r['error']}")
            L.append("")
            continue
        L.append(f"- settle before each sample: {r.get('settle_s')} s")
        for k, m in r["samples"].items():
            line = (f"- {k} (t={m['t']} s): PSS {mb(m['pss_kb'])} MB, RSS-sum {mb(m['rss_kb'])} MB, private "
                    f"{mb(m['private_kb'])} MB, server CPU {m['cpu_s']} s")
            if m.get("shmmem"):
                sm = m["shmmem"]
                line += (f"; `core.shmmem`: used {mb(sm.get('used', 0) / 1024)} MB, real_used "
                         f"{mb(sm.get('real_used', 0) / 1024)} MB, max_used {mb(sm.get('max_used', 0) / 1024)} MB, "
                         f"fragments {sm.get('fragments')}")
            L.append(line)
        for p in r.get("phases", []):
            L.append(f"- half {p['half']} (records {p['range'][0]:,}..{p['range'][1]:,}): PUBLISH {p['publish_rate']:,}/s "
                     f"in {p['publish_s']} s, SUBSCRIBE {p['subscribe_rate']:,}/s in {p['subscribe_s']} s")
        L.append(f"- final statuses: {json.dumps(r['status_counts'])}")
        L.append(f"- generator counters: {json.dumps(r['stats'])}")
        pr = r.get("probe", {})
        L.append(f"- state check after the last sample: {pr.get('fetch_notify_has_tuple')}/{pr.get('sampled')} fetch "
                 f"SUBSCRIBEs (Expires 0) got a NOTIFY with the published tuple; "
                 f"{pr.get('watcher_notified_on_publish')}/{pr.get('sampled')} watchers got a NOTIFY after a new PUBLISH")
        if "kamcmd_presentity_list_entries" in r:
            L.append(f"- `kamcmd presence.presentity_list`: {r['kamcmd_presentity_list_entries']:,} entries")
        if r.get("failure_examples"):
            L.append("- failure examples: " + "; ".join(r["failure_examples"][:5]))
        L.append("")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------ in-process mode
def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    return 0


def _pymalloc_arenas() -> tuple[int, int]:
    """(arenas allocated now, arenas highwater) from sys._debugmallocstats on stderr."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    m1 = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    m2 = re.search(r"# arenas highwater mark\s*=\s*([\d,]+)", text)
    conv = lambda m: int(m.group(1).replace(",", "")) if m else 0  # noqa: E731
    return conv(m1), conv(m2)


def in_process(a) -> int:
    """Feed the same PUBLISH/SUBSCRIBE load to a SipCore in this process with a
    fake clock (no sockets, no CPU contention) and measure what the state costs:
    tracemalloc's live bytes (exact, allocator-independent) and RSS (what the
    allocator kept). Fast to iterate on; the PSS comparison with Kamailio needs
    the real servers."""
    import gc
    import tracemalloc

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from presenced.config import load_config
    from presenced.core.server import SipCore
    from presenced.transaction.layer import Address

    trace = not a.no_tracemalloc
    if trace:
        tracemalloc.start(a.frames)
    cfg = load_config(None, ["presence_xml.force_active=1"], {"db.url": "memory"})
    core = SipCore(cfg)
    gen = Generator((HOST, a.port), a.client_port, "inproc")
    src = Address("udp", HOST, a.client_port, None)
    local = (HOST, a.port)
    clock = [1000.0]
    counts = {"ok": 0, "failed": 0, "notifies": 0}

    def pump(data: bytes) -> None:
        now = clock[0]
        dl = core.next_deadline()
        if dl is not None and dl <= now:
            core.handle_timers(now)
        core.receive(data, src, local, now)
        while core.outbox:
            out, _dest, _ct = core.outbox.pop(0)
            if out.startswith(b"SIP/2.0 "):
                counts["ok" if out[8:9] == b"2" else "failed"] += 1
            elif out.startswith(b"NOTIFY "):
                counts["notifies"] += 1
                head = out.partition(b"\r\n\r\n")[0]
                keep = b"\r\n".join(_RE_KEEP.findall(head))
                core.receive(b"SIP/2.0 200 OK\r\n" + keep + b"\r\nContent-Length: 0\r\n\r\n", src, local, now)

    def settle(seconds: float) -> None:
        clock[0] += seconds
        core.handle_timers(clock[0])
        core.outbox.clear()

    def sample(name: str) -> dict:
        gc.collect()
        if a.trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        m = {"name": name, "rss_kb": _vm_kb("VmRSS"), "server_tx": len(core.tx.server),
             "client_tx": len(core.tx.client), "timers": len(core.timers)}
        if trace:  # tracemalloc's hooks hide pymalloc's statistics
            m["arenas"] = m["arenas_highwater"] = "-"
        else:
            m["arenas"], m["arenas_highwater"] = _pymalloc_arenas()
        if trace:
            m["traced"] = tracemalloc.get_traced_memory()[0]
            m["snapshot"] = tracemalloc.take_snapshot()
        return m

    n = a.records
    step = 1.0 / a.rate
    samples = [sample("baseline")]
    t0 = time.process_time()
    for lo, hi in ((1, n // 2), (n // 2 + 1, n)):
        for i in range(lo, hi + 1):
            clock[0] += step
            pump(gen.publish(i).data)
        for i in range(lo, hi + 1):
            clock[0] += step
            pump(gen.subscribe(i, i).data)
        samples.append(sample(f"half {lo}..{hi}, transactions lingering"))
        settle(a.linger_settle)
        samples.append(sample(f"half {lo}..{hi}, +{a.linger_settle:g} s"))
    cpu = time.process_time() - t0
    base, end, live = samples[0], samples[-1], samples[-2]
    print(f"in-process: {n:,} publications + {n:,} subscriptions at {a.rate:,.0f} requests/s (fake clock); "
          f"{counts['ok']:,} 2xx, {counts['failed']:,} failed, {counts['notifies']:,} NOTIFYs; CPU {cpu:.1f} s"
          + (" (tracemalloc on)" if trace else ""))
    print(f"{'sample':44} {'traced B/pair':>14} {'RSS B/pair':>11} {'arenas':>7} {'server tx':>10} {'client tx':>10}")
    for m in samples:
        tr = f"{(m['traced'] - base['traced']) / n:,.0f}" if trace else "-"
        print(f"{m['name']:44} {tr:>14} {(m['rss_kb'] - base['rss_kb']) * 1024 / n:>11,.0f} "
              f"{m['arenas']:>7} {m['server_tx']:>10} {m['client_tx']:>10}")
    if trace:
        for label, frm in (("held state (after Timer J)", base), ("lingering transactions", end)):
            to = end if frm is base else live
            stats = to["snapshot"].compare_to(frm["snapshot"], "traceback" if a.frames > 1 else "lineno")
            print(f"\ntop {a.top} by size, {label}, bytes per pair:")
            for st in stats[: a.top]:
                where = " <- ".join(f"{os.path.relpath(f.filename, ROOT) if f.filename.startswith(ROOT) else os.path.basename(f.filename)}:{f.lineno}"
                                    for f in st.traceback[: a.frames])
                print(f"  {st.size_diff / n:8,.0f}  {st.count_diff / n:5.2f} blocks  {where}")
    failed = counts["failed"] or counts["ok"] != 2 * n or counts["notifies"] != n
    return 1 if failed else 0


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="kamailio,presenced,presenced-sqlite",
                    help="comma list of kamailio, presenced, presenced-sqlite")
    ap.add_argument("--records", type=int, default=100_000, help="publications and subscriptions, each (default 100000)")
    ap.add_argument("--rate", type=float, default=3000, help="requests/s offered (default 3000)")
    ap.add_argument("--window", type=int, default=500, help="max requests in flight (default 500)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds to wait before each memory sample (default: Kamailio 8 = tm wait timer 5 s + 3, "
                         "presenced 35 = Timer J 32 s + 3)")
    ap.add_argument("--port", type=int, default=16060, help="server UDP port (default 16060)")
    ap.add_argument("--client-port", type=int, default=16070, help="generator UDP port (+1 for the readiness check)")
    ap.add_argument("--probe", type=int, default=50, help="presentities checked after the last sample")
    ap.add_argument("--harness", default=os.environ.get("PRESENCED_BENCH_HARNESS", DEFAULT_HARNESS))
    ap.add_argument("--kamailio-bin", default="/usr/sbin/kamailio")
    ap.add_argument("--shm", type=int, default=2048, help="Kamailio -m MB (the shared harness's default, 2048)")
    ap.add_argument("--pkg", type=int, default=32, help="Kamailio -M MB (the shared harness's default, 32)")
    ap.add_argument("--children", type=int, default=8, help="Kamailio -n (the shared harness's default, 8)")
    ap.add_argument("--no-kamcmd", dest="kamcmd", action="store_false",
                    help="do not load ctl.so into Kamailio (no core.shmmem readings)")
    ap.add_argument("--kamcmd-lists", action="store_true",
                    help="also dump presence.presentity_list via kamcmd (slow with 100k entries)")
    ap.add_argument("--signal-on-sample", metavar="USR2",
                    help="send this signal to presenced before each memory sample, for profiling with a wrapper "
                         "given as --venv DIR (DIR/bin/presenced) that e.g. dumps a tracemalloc snapshot on it")
    ap.add_argument("--signal-wait", type=float, default=5.0, help="seconds to wait after --signal-on-sample")
    ap.add_argument("--workers", type=int, default=1, help="presenced --workers (default 1)")
    ap.add_argument("--venv", default=os.environ.get("VENV", os.path.join(ROOT, ".venv")))
    ap.add_argument("--out", help="results directory (default bench/results/<stamp>-state-memory)")
    ap.add_argument("--in-process", action="store_true",
                    help="no servers: feed the load to presenced's SipCore in this process with a fake clock and "
                         "print live bytes (tracemalloc) and RSS per pub+sub, plus the top allocation sites")
    ap.add_argument("--no-tracemalloc", action="store_true", help="--in-process: RSS only (faster, no tracing overhead)")
    ap.add_argument("--trim", action="store_true", help="--in-process: call glibc malloc_trim(0) before each sample")
    ap.add_argument("--frames", type=int, default=1, help="--in-process: traceback depth for the top sites")
    ap.add_argument("--top", type=int, default=25, help="--in-process: how many allocation sites to print")
    ap.add_argument("--linger-settle", type=float, default=40.0,
                    help="--in-process: fake seconds to advance after each half (past Timer J)")
    a = ap.parse_args()
    if a.in_process:
        return in_process(a)
    a.harness = os.path.abspath(a.harness)
    a.venv = os.path.abspath(a.venv)
    if a.port == 5060:
        raise SystemExit("use a port other than 5060 (others run benchmarks there)")
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if "kamailio" in servers and not os.path.exists(os.path.join(a.harness, "kamailio", "presence.cfg")):
        raise SystemExit(f"{a.harness}/kamailio/presence.cfg not found (set --harness or PRESENCED_BENCH_HARNESS)")
    if a.kamcmd and not shutil.which("kamcmd"):
        a.kamcmd = False
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(ROOT, "bench", "results", f"{stamp}-state-memory")
    rundir = os.path.join(ROOT, "bench", "runs", f"{stamp}-state-memory")
    os.makedirs(out, exist_ok=True)
    os.makedirs(rundir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(143)))
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(shlex.quote(x) for x in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "machine": machine_info(a), "args": {k: v for k, v in vars(a).items()}}
    if os.environ.get("BENCH_MEMORY_MAKE"):
        meta["command"] = os.environ["BENCH_MEMORY_MAKE"]
    results = []
    try:
        for name in servers:
            try:
                results.append(asyncio.run(run_server(name, a, rundir)))
            except Exception as e:  # noqa: BLE001 - report and go on with the next server
                print(f"!! {name}: {e}", flush=True)
                results.append({"server": name, "error": str(e)})
            time.sleep(1)
    finally:
        cleanup()
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write(render(meta, results))
    print(f"== results: {out} (server logs: {rundir})")
    return 1 if any("error" in r or r.get("failures") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
