#!/usr/bin/env python3
"""Microbenchmarks of presenced's hot functions (stdlib + presenced only).

Times, in-process and without sockets:

  parse PUBLISH         presenced.sip.parse_message on a typical PIDF PUBLISH
  parse SUBSCRIBE       presenced.sip.parse_message on a typical SUBSCRIBE
  parse+check PUBLISH   parse_message + check_request (Via, Call-ID, CSeq, From/To URIs, ...)
  parse NOTIFY 200      parse_message of a NOTIFY's 200 + the Via/CSeq the match reads
  validate PIDF         validate_pidf on scenario A's body (hardened lxml parse)
  validate summary      validate_message_summary on scenario E's body
  build_response        presenced.sip.build_response (200 + SIP-ETag/Expires)
  partition             core/partition.py classify (several workers): PUBLISH, initial
                        SUBSCRIBE (R-URI, cached), in-dialog SUBSCRIBE (To-tag), NOTIFY 200
                        (Via branch), one each per operation / 4
  core OPTIONS          SipCore.receive(OPTIONS) incl. the 200
  core PUBLISH initial  SipCore.receive(PUBLISH, no If-Match) -> 200 + SIP-ETag
  core PUBLISH refresh  SipCore.receive(PUBLISH, SIP-If-Match, no body) -> 200
  core SUBSCRIBE        SipCore.receive(initial SUBSCRIBE presence) -> 200 + NOTIFY
  core MWI cycle        scenario E: message-summary PUBLISH, SUBSCRIBE + NOTIFY + 200,
                        un-SUBSCRIBE + NOTIFY + 200, PUBLISH remove (6 receive calls)

The messages mirror the shared SIPp harness's scenarios A-C. Every core call
uses a new Via branch and Call-ID (so no retransmission short-cut), a fake,
monotonically increasing `now`, and `core.outbox` is drained after each call.
Each benchmark is timed `--runs` times (fresh SipCore per run, setup not
timed); the table shows the median (and min) microseconds per operation.

  python bench/micro.py                 # table
  python bench/micro.py --json out.json # also write the numbers
  python bench/micro.py --compare bench/results/micro-baseline.json   # exit 1 on a >2x slowdown (--tolerance)
  python bench/micro.py --only "core PUBLISH initial" --runs 1 -n 20000   # e.g. under cProfile
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

from presenced.config import load_config
from presenced.core.server import SipCore
from presenced.sip import build_response, parse_message
from presenced.transaction.layer import Address

SOURCE = Address("udp", "127.0.0.1", 5555, None)
LOCAL = ("127.0.0.1", 5060)
N_USERS = 10_000


def make_cfg():
    return load_config(None, ["presence_xml.force_active=1"], {"db.url": "memory"})


def pidf(user: str, tuple_id: str, note: str = "bench") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{user}@127.0.0.1">\r\n'
        f'<tuple id="{tuple_id}">\r\n'
        "<status><basic>open</basic></status>\r\n"
        f"<note>{note}</note>\r\n"
        "</tuple>\r\n"
        "</presence>\r\n"
    ).encode()


def publish(i: int, user: str, etag: str | None = None, body: bytes | None = None, expires: int = 600) -> bytes:
    if body is None and etag is None:
        body = pidf(user, f"a{i}")
    body = body or b""
    lines = [
        f"PUBLISH sip:{user}@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-{i}-pub;rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag={i}a",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {i}-pub@127.0.0.1",
        "CSeq: 1 PUBLISH",
        "Event: presence",
        f"Expires: {expires}",
        "User-Agent: presence-bench",
    ]
    if etag is not None:
        lines.append(f"SIP-If-Match: {etag}")
    if body:
        lines.append("Content-Type: application/pidf+xml")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def subscribe(i: int, user: str, expires: int = 600) -> bytes:
    return (
        f"SUBSCRIBE sip:{user}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-{i}-sub;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:w{i}@127.0.0.1>;tag={i}c\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {i}-sub@127.0.0.1\r\n"
        "CSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:w{i}@127.0.0.1:5555;transport=udp>\r\n"
        "Event: presence\r\n"
        "Accept: application/pidf+xml\r\n"
        f"Expires: {expires}\r\n"
        "User-Agent: presence-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def options(i: int) -> bytes:
    return (
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-{i}-opt;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={i}o\r\n"
        "To: <sip:127.0.0.1:5060>\r\n"
        f"Call-ID: {i}-opt@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def mwi_publish(i: int, user: str, etag: str | None = None) -> bytes:
    """Scenario E's PUBLISH (initial with a summary body, or the remove with SIP-If-Match)."""
    body = b"" if etag else (
        f"Messages-Waiting: yes\r\nMessage-Account: sip:{user}@127.0.0.1\r\nVoice-Message: 2/8 (0/2)\r\n"
    ).encode()
    lines = [
        f"PUBLISH sip:{user}@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-{i}-mp{1 if etag else 0};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag={i}mp",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {i}-mwi@127.0.0.1",
        f"CSeq: {2 if etag else 1} PUBLISH",
        "Event: message-summary",
        f"Expires: {0 if etag else 600}",
    ]
    if etag:
        lines.append(f"SIP-If-Match: {etag}")
    lines.append("User-Agent: presence-bench")
    if body:
        lines.append("Content-Type: application/simple-message-summary")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def mwi_subscribe(i: int, user: str, to_tag: str | None = None, ruri: str | None = None) -> bytes:
    """Scenario E's SUBSCRIBE (initial) or un-SUBSCRIBE (in-dialog, Expires: 0)."""
    return (
        f"SUBSCRIBE {ruri or f'sip:{user}@127.0.0.1'} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-{i}-ms{1 if to_tag else 0};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:m{i}@127.0.0.1>;tag={i}ms\r\n"
        f"To: <sip:{user}@127.0.0.1>{f';tag={to_tag}' if to_tag else ''}\r\n"
        f"Call-ID: {i}-mwi@127.0.0.1\r\n"
        f"CSeq: {2 if to_tag else 1} SUBSCRIBE\r\n"
        f"Contact: <sip:m{i}@127.0.0.1:5555;transport=udp>\r\n"
        "Event: message-summary\r\n"
        "Accept: application/simple-message-summary\r\n"
        f"Expires: {0 if to_tag else 600}\r\n"
        "User-Agent: presence-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def notify_ok(notify: bytes, i: int) -> bytes:
    """The watcher's 200 to a NOTIFY (what SIPp sends back)."""
    head = notify.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [h for h in head if h.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
    return (b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep)
            + f"\r\nContact: <sip:m{i}@127.0.0.1:5555;transport=udp>\r\nContent-Length: 0\r\n\r\n".encode())


def mwi_cycle(recv, out, now, i: int, u: str) -> None:
    """One scenario E cycle: PUBLISH, SUBSCRIBE (+NOTIFY, answered), un-SUBSCRIBE
    (+NOTIFY terminated, answered), PUBLISH remove; six SipCore.receive calls."""
    recv(mwi_publish(i, u), SOURCE, LOCAL, now())
    etag = header(out[0][0], "SIP-ETag")
    out.clear()
    recv(mwi_subscribe(i, u), SOURCE, LOCAL, now())
    resp, notify = out[0][0], out[1][0]
    out.clear()
    to_tag = header(resp, "To").rsplit("tag=", 1)[1]
    contact = header(resp, "Contact").strip("<>")
    recv(notify_ok(notify, i), SOURCE, LOCAL, now())
    recv(mwi_subscribe(i, u, to_tag=to_tag, ruri=contact), SOURCE, LOCAL, now())
    notify = out[1][0]
    out.clear()
    recv(notify_ok(notify, i), SOURCE, LOCAL, now())
    recv(mwi_publish(i, u, etag=etag), SOURCE, LOCAL, now())
    out.clear()


def user(i: int) -> str:
    return f"user{i % N_USERS + 1}"


def header(data: bytes, name: str) -> str | None:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower().encode():
            return v.strip().decode()
    return None


class Clock:
    """Fake monotonic clock: +50 us per call."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 0.00005
        return self.t


# --------------------------------------------------------------------------
# benchmarks: each factory returns (setup-free loop function(n) -> None, check)

def bench_parse_publish(n: int):
    data = publish(1, "user1")
    for _ in range(n):
        parse_message(data)


def bench_parse_subscribe(n: int):
    data = subscribe(1, "user1")
    for _ in range(n):
        parse_message(data)


def bench_build_response(n: int):
    req = parse_message(publish(1, "user1"))
    hdrs = [("SIP-ETag", "a1b2c3d4e5f6"), ("Expires", "600"), ("Server", "presenced/bench")]
    for _ in range(n):
        build_response(req, 200, "OK", hdrs, to_tag="5f3a9c1e")


def bench_validate_pidf(n: int):
    from presenced.events.formats.pidf import validate_pidf

    body = pidf("user1", "a1", "bench A")
    for _ in range(n):
        validate_pidf(body)


def bench_validate_summary(n: int):
    from presenced.events.formats.summary import validate_message_summary

    body = b"Messages-Waiting: yes\r\nMessage-Account: sip:user1@127.0.0.1\r\nVoice-Message: 2/8 (0/2)\r\n"
    for _ in range(n):
        validate_message_summary(body)


def bench_check_publish(n: int):
    from presenced.sip.message import check_request

    data = publish(1, "user1")
    for _ in range(n):
        check_request(parse_message(data))


def bench_parse_response(n: int):
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK0123456789abcdef;rport=5060\r\n"
        b"From: <sip:user1@127.0.0.1>;tag=0123456789abcdef\r\nTo: <sip:m1@127.0.0.1>;tag=1ms\r\n"
        b"Call-ID: 1-mwi@127.0.0.1\r\nCSeq: 1 NOTIFY\r\nContact: <sip:m1@127.0.0.1:5555;transport=udp>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for _ in range(n):
        r = parse_message(data)
        r.top_via.branch, r.cseq.method  # noqa: B018 - what the client transaction match reads


def bench_partition(n: int):
    from presenced.core.partition import Partitioner

    core = _core()
    p = Partitioner(2, 0, core.engine.presentity_key)
    tag = p.dialog_tag("sip:user1@127.0.0.1")
    msgs = [
        publish(1, "user1"), subscribe(1, "user1"),
        subscribe(2, "user1").replace(b"To: <sip:user1@127.0.0.1>", b"To: <sip:user1@127.0.0.1>;tag=" + tag.encode()),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKw1.0123456789abcdef;rport=5060\r\n"
        b"From: <sip:user1@127.0.0.1>;tag=" + tag.encode() + b"\r\nTo: <sip:m1@127.0.0.1>;tag=1ms\r\n"
        b"Call-ID: 1-mwi@127.0.0.1\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n",
    ]
    classify = p.classify
    assert classify(msgs[3]) == 1
    for _ in range(n // 4):
        for m in msgs:
            classify(m)


def _core():
    return SipCore(make_cfg())


def _prepare(n, make):
    """Pre-build the datagrams so that message construction is not timed."""
    return [make(i) for i in range(n)]


def run_core(n: int, kind: str) -> float:
    """Returns elapsed seconds for n SipCore.receive calls of `kind` (setup excluded)."""
    core = _core()
    now = Clock()
    out = core.outbox
    recv = core.receive
    if kind == "options":
        msgs = _prepare(n, options)
    elif kind == "publish":
        msgs = _prepare(n, lambda i: publish(i, user(i)))
    elif kind == "refresh":
        # one publication per presentity for up to N_USERS presentities, then refresh them in turn
        k = min(n, N_USERS)
        etags = []
        for i in range(k):
            recv(publish(10_000_000 + i, user(i)), SOURCE, LOCAL, now())
            data = out[-1][0]
            out.clear()
            et = header(data, "SIP-ETag")
            assert et, data[:200]
            etags.append(et)
        # a refresh changes the entity tag, so each publication is refreshed once per run
        msgs = [publish(i, user(i % k), etag=etags[i % k]) for i in range(k)]
        n = k
    elif kind == "subscribe":
        msgs = _prepare(n, lambda i: subscribe(i, user(i)))
    elif kind == "mwi":
        # the cycle needs the server's answers (etag, to-tag, NOTIFYs), so message
        # building and the answers' parsing in this script are timed too
        mwi_cycle(recv, out, now, 20_000_000, "probe")
        gc.collect()
        t0 = time.perf_counter()
        for i in range(n):
            mwi_cycle(recv, out, now, i, user(i))
        t1 = time.perf_counter()
        if core.engine.subs_by_dialog or core.engine.etags:
            raise SystemExit("mwi: the cycle left state behind")
        return t1 - t0
    else:
        raise ValueError(kind)
    # sanity: one call outside the timing (on a presentity the timed messages do not
    # touch) must get a 2xx, plus a NOTIFY for SUBSCRIBE and a new SIP-ETag for a refresh
    if kind == "refresh":
        recv(publish(20_000_000, "probe"), SOURCE, LOCAL, now())
        probe = publish(20_000_001, "probe", etag=header(out[-1][0], "SIP-ETag"))
        out.clear()
    elif kind == "options":
        probe = options(20_000_000)
    elif kind == "publish":
        probe = publish(20_000_000, "probe")
    else:
        probe = subscribe(20_000_000, "probe")
    recv(probe, SOURCE, LOCAL, now())
    first = [d for d, _, _ in out]
    out.clear()
    status = first[0].split(b" ", 2)[1] if first else b"none"
    if status not in (b"200", b"202"):
        raise SystemExit(f"{kind}: expected 2xx, got {first[:1]!r}")
    if kind == "subscribe" and not any(d.startswith(b"NOTIFY ") for d in first):
        raise SystemExit("subscribe: no NOTIFY in outbox")
    if kind in ("publish", "refresh") and not header(first[0], "SIP-ETag"):
        raise SystemExit(f"{kind}: 200 without SIP-ETag")
    gc.collect()
    t0 = time.perf_counter()
    for d in msgs:
        recv(d, SOURCE, LOCAL, now())
        out.clear()
    t1 = time.perf_counter()
    return t1 - t0


def bench_core(kind):
    def f(n):
        return run_core(n, kind)
    return f


BENCHES = [
    ("parse PUBLISH", bench_parse_publish, 20_000),
    ("parse SUBSCRIBE", bench_parse_subscribe, 20_000),
    ("parse+check PUBLISH", bench_check_publish, 20_000),
    ("parse NOTIFY 200", bench_parse_response, 20_000),
    ("validate PIDF", bench_validate_pidf, 20_000),
    ("validate summary", bench_validate_summary, 20_000),
    ("build_response", bench_build_response, 20_000),
    ("partition", bench_partition, 40_000),
    ("core OPTIONS", bench_core("options"), 5_000),
    ("core PUBLISH initial", bench_core("publish"), 5_000),
    ("core PUBLISH refresh", bench_core("refresh"), 5_000),
    ("core SUBSCRIBE", bench_core("subscribe"), 5_000),
    ("core MWI cycle", bench_core("mwi"), 2_000),
]


def time_one(fn, n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    r = fn(n)
    t1 = time.perf_counter()
    # core benches time themselves (setup excluded) and return the elapsed seconds
    return r if isinstance(r, float) else t1 - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="timed runs per benchmark (median reported)")
    ap.add_argument("-n", type=int, default=None, help="operations per run (default per benchmark)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the default operation counts")
    ap.add_argument("--only", action="append", default=None, help="run only benchmarks whose name contains this")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--compare", default=None, metavar="BASELINE_JSON",
                    help="compare with an earlier --json file; exit 1 if a benchmark's best run got slower than --tolerance x")
    ap.add_argument("--tolerance", type=float, default=2.0, help="allowed slowdown factor for --compare (default 2.0: a shared 2-core box is noisy)")
    a = ap.parse_args(argv)

    rows = []
    for name, fn, n_default in BENCHES:
        if a.only and not any(o.lower() in name.lower() for o in a.only):
            continue
        n = a.n or max(1, int(n_default * a.scale))
        if "refresh" in name:
            n = min(n, N_USERS)  # each publication refreshed at most once per run (etag changes)
        time_one(fn, max(1, n // 10))  # warm-up
        per_op = [time_one(fn, n) / n * 1e6 for _ in range(a.runs)]
        rows.append({"name": name, "n": n, "runs": a.runs, "median_us": statistics.median(per_op),
                     "min_us": min(per_op), "max_us": max(per_op)})
        print(f"  {name:<22} {statistics.median(per_op):9.2f} us/op", file=sys.stderr, flush=True)

    print()
    print(f"presenced micro-benchmarks ({platform.python_implementation()} {platform.python_version()}, "
          f"median of {a.runs} runs)")
    print()
    print("| benchmark | ops/run | median µs/op | min µs/op | max µs/op | ops/s (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['n']} | {r['median_us']:.2f} | {r['min_us']:.2f} | {r['max_us']:.2f} | "
              f"{1e6 / r['median_us']:,.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"python": platform.python_version(), "results": rows}, f, indent=1)
    if a.compare:
        with open(a.compare) as f:
            base = {r["name"]: r for r in json.load(f)["results"]}
        worse = []
        print()
        # compare the best run of each side: far less sensitive to other processes than the median
        print("| benchmark | baseline min µs/op | now min µs/op | ratio |")
        print("|---|---:|---:|---:|")
        for r in rows:
            b = base.get(r["name"])
            if not b:
                continue
            ratio = r["min_us"] / b["min_us"]
            print(f"| {r['name']} | {b['min_us']:.2f} | {r['min_us']:.2f} | {ratio:.2f}x |")
            if ratio > a.tolerance:
                worse.append(f"{r['name']} {ratio:.2f}x")
        if worse:
            print(f"REGRESSION (> {a.tolerance}x): " + ", ".join(worse), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
