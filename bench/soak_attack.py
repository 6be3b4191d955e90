#!/usr/bin/env python3
"""Hostile traffic of the soak test (bench/soak.sh, issue #13).

  soak_attack.py hostile --envoy PORT --http PORT --fixtures DIR --state FILE --kinds K,K
                         --rate R --duration S --out FILE
      R requests/s for S seconds, kinds in turn, each answer checked against what the kind must
      get. Kinds: `tokens` (every hostile JWT of the current generation's hostile.txt: expired,
      wrong aud/iss, nbf ahead, forged signature, alg none, HS256 with the public key, oversized,
      claims that would inject header values, duplicate members, exp as a string or 1e300, unknown
      crit, a jku naming a URL — all 401), `garbage` (random bytes shaped like a JWT, not base64,
      empty: 401), `storm` (a valid signature under a kid nobody publishes, a new kid each time:
      401 after the one refetch per refresh_min), `oversized_header` (a 70 KiB header: Envoy's 431),
      `multi_auth` (two Authorization headers, which Envoy joins: 400), `bad_path` (`%2e%2e`, `//`,
      `%2F`: 400), `basic` (a Basic scheme: 401), `forward_auth` (garbage tokens straight to
      citadel-authz's forward-auth endpoint: 401). Output: JSON {kind: {"status src": n}} plus the
      unexpected ones.

  soak_attack.py slow --target LABEL=HOST:PORT[,proto[,pipelined]] ... --conns N --duration S --out FILE
      Per target, N connections that send nothing (idle), N that trickle a request (or the HTTP/2
      preface, proto h2) one byte a second, and N/5 that send `pipelined` requests (default 20,000)
      and never read an answer (HTTP only). Records when the server closes each connection. Output: JSON per target
      and mode: opened, closed by the server, seconds to close (median, max), still open at the end.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak_load import Pool, source  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None

PATH = "/api/orders/42"


def read_gen(state):
    try:
        with open(state) as f:
            return json.load(f)["gen"]
    except (OSError, ValueError, KeyError):
        return 0


def garbage():
    r = random.random()
    if r < 0.3:
        return ".".join(os.urandom(random.randint(4, 40)).hex() for _ in range(3))
    if r < 0.5:
        return "eyJ!!!.@@@.###"
    if r < 0.6:
        return ".."
    if r < 0.8:
        return "eyJhbGciOiJFUzI1NiJ9." + "A" * random.randint(1, 300) + ".sig"
    return "not-a-jwt." + os.urandom(8).hex() + ".x"  # always two dots: a JWT, never introspected


def build(kind, gen_tokens, storm):
    """(port key, raw request bytes, expected statuses)."""
    h = "Host: soak.local\r\n"
    if kind == "tokens":
        k, tok = random.choice(gen_tokens)
        return "envoy", f"GET {PATH} HTTP/1.1\r\n{h}Authorization: Bearer {tok}\r\n\r\n", {401}, k
    if kind == "garbage":
        tok = garbage()
        return "envoy", f"GET {PATH} HTTP/1.1\r\n{h}Authorization: Bearer {tok}\r\n\r\n", {401}, kind
    if kind == "storm":
        tok = random.choice(storm)
        return "envoy", f"GET {PATH} HTTP/1.1\r\n{h}Authorization: Bearer {tok}\r\n\r\n", {401}, kind
    if kind == "oversized_header":
        return "envoy", f"GET {PATH} HTTP/1.1\r\n{h}X-Junk: {'a' * 70000}\r\n\r\n", {431}, kind
    if kind == "multi_auth":
        _, tok = gen_tokens[0]
        return ("envoy", f"GET {PATH} HTTP/1.1\r\n{h}Authorization: Bearer a.b.c\r\n"
                f"Authorization: Bearer x.y.z\r\n\r\n", {400}, kind)
    if kind == "bad_path":
        p = random.choice(["/api/orders/%2e%2e/admin", "/api/orders//42", "/api/orders/4%2F2",
                           "/api/orders/%252e", "/api/orders/%00", "/api/orders/a;b"])
        return "envoy", f"GET {p} HTTP/1.1\r\n{h}Authorization: Bearer a.b.c\r\n\r\n", {400}, kind
    if kind == "basic":
        return "envoy", f"GET {PATH} HTTP/1.1\r\n{h}Authorization: Basic dXNlcjpwYXNz\r\n\r\n", {401}, kind
    if kind == "forward_auth":
        tok = garbage()
        return ("http", f"GET /api/iam/check-access HTTP/1.1\r\n{h}X-Forwarded-Method: GET\r\n"
                f"X-Forwarded-Uri: {PATH}\r\nAuthorization: Bearer {tok}\r\n\r\n", {401}, kind)
    raise SystemExit(f"unknown kind {kind}")


async def hostile(a):
    loop = asyncio.get_running_loop()
    # 32 connections into Envoy: a 300/s storm still goes out while the servers are a few
    # hundred ms behind (a request waits for its connection: HTTP/1.1, no pipelining).
    pools = {"envoy": Pool(loop, "127.0.0.1", a.envoy, 32, 1000),
             "http": Pool(loop, "127.0.0.1", a.http, 4, 1000)}
    for p in pools.values():
        await p.start()
    gen = read_gen(a.state)
    with open(os.path.join(a.fixtures, f"g{gen}", "hostile.txt")) as f:
        gen_tokens = [tuple(l.rstrip("\n").split("\t", 1)) for l in f if "\t" in l]
    storm = []
    if "storm" in a.kinds:
        with open(os.path.join(a.fixtures, "storm.txt")) as f:
            storm = [l.strip() for l in f if l.strip()]
    kinds = a.kinds.split(",")
    res, unexpected = {}, []
    pending = [0]
    t0 = time.monotonic()
    sent = 0
    while True:
        el = time.monotonic() - t0
        if el >= a.duration:
            break
        due = int(el * a.rate) - sent
        for _ in range(max(due, 0)):
            kind = kinds[sent % len(kinds)]
            sent += 1
            port, req, want, label = build(kind, gen_tokens, storm)

            def cb(status, body, label=label, want=want):
                pending[0] -= 1
                key = f"{status} {source(status, body)}"
                d = res.setdefault(label, {})
                d[key] = d.get(key, 0) + 1
                if status not in want and len(unexpected) < 50:
                    unexpected.append({"kind": label, "status": status, "body": body[:200].decode(errors="replace")})
            pending[0] += 1
            if not pools[port].submit(req.encode(), cb):
                pending[0] -= 1
                res.setdefault(label, {})
                res[label]["dropped"] = res[label].get("dropped", 0) + 1
        for p in pools.values():
            p.sweep(time.monotonic())
        await asyncio.sleep(0.005)
    deadline = time.monotonic() + 6
    while pending[0] > 0 and time.monotonic() < deadline:
        for p in pools.values():
            p.sweep(time.monotonic())
        await asyncio.sleep(0.05)
    for p in pools.values():
        p.close()
    want_of = {}
    for kind in kinds:
        if kind == "tokens":
            for k, _ in gen_tokens:
                want_of[k] = [401]
        else:
            want_of[kind] = sorted(build(kind, gen_tokens or [("x", "a.b.c")], storm or ["a.b.c"])[2])
    # "dropped" requests were never sent (this client's backlog was full while the servers were
    # behind): no answer to judge. They are counted apart (`not_sent`), not as wrong answers; a
    # sent request that got no answer (closed, timeout) is a wrong answer.
    bad = sum(n for k, d in res.items() for s, n in d.items()
              if s != "dropped" and (not s.split()[0].isdigit() or int(s.split()[0]) not in want_of.get(k, [])))
    not_sent = sum(d.get("dropped", 0) for d in res.values())
    with open(a.out, "w") as f:
        json.dump({"kinds": kinds, "rate": a.rate, "duration": a.duration, "sent": sent, "gen": gen,
                   "results": res, "expected": want_of, "unexpected_count": bad, "not_sent": not_sent,
                   "unexpected": unexpected}, f)


# Requests a noread connection pipelines unless its target says otherwise.
NOREAD_PIPELINED = 20000


async def slow_conn(host, port, mode, proto, duration, rec, pipelined=NOREAD_PIPELINED):
    """idle: connect, send nothing; trickle: one byte a second; noread: pipelined requests, never
    a read (the server's answers pile up in its buffers: must stay bounded).

    A noread client has a 4 KiB receive buffer, as a slow reader on a real network would, so the
    answers pile up on the server's side of the connection rather than in the client's kernel.
    How many requests it sends is the target's `pipelined`: into Envoy every one is a check, and
    20,000 there made the "slow" client a request flood (see do_slow in soak_faults.py)."""
    t_open = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if mode == "noread":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as e:
        sock.close()
        rec.append({"mode": mode, "connect_error": str(e)})
        return
    state = {"closed": None}

    async def watch():
        try:
            while await reader.read(65536):
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        state["closed"] = time.monotonic()

    async def trickle():
        msg = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if proto == "h2"
               else b"GET /healthz HTTP/1.1\r\nHost: soak.local\r\nX-Slow: " + b"a" * 4096)
        for i in range(len(msg)):
            writer.write(msg[i:i + 1])
            await asyncio.sleep(1.0)

    watcher = asyncio.ensure_future(watch()) if mode != "noread" else None
    sender = None
    try:
        if mode == "trickle":
            sender = asyncio.ensure_future(trickle())
        elif mode == "noread":
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: soak.local\r\n\r\n" * pipelined)
        end = t_open + duration
        while state["closed"] is None and time.monotonic() < end:
            await asyncio.sleep(0.2)
    except (OSError, ConnectionError):
        pass
    closed = state["closed"]
    rec.append({"mode": mode, "closed_after": None if closed is None else round(closed - t_open, 2)})
    for t in (watcher, sender):
        if t is not None:
            t.cancel()
    writer.transport.abort()


async def slow(a):
    out = {}
    tasks = []
    for spec in a.target:
        label, addr = spec.split("=", 1)
        addr, *opts = addr.split(",")
        proto = opts[0] if opts else "http"
        pipelined = int(opts[1]) if len(opts) > 1 else NOREAD_PIPELINED
        host, port = addr.rsplit(":", 1)
        rec = out.setdefault(label, {"proto": proto, "conns": []})["conns"]
        modes = ["idle"] * a.conns + ["trickle"] * a.conns + (["noread"] * max(1, a.conns // 5) if proto == "http" else [])
        for m in modes:
            tasks.append(slow_conn(host, int(port), m, proto, a.duration, rec, pipelined))
    await asyncio.gather(*tasks)
    summary = {}
    for label, d in out.items():
        for mode in sorted({c["mode"] for c in d["conns"]}):
            cs = [c for c in d["conns"] if c["mode"] == mode]
            if mode == "noread":  # never read: when the server closed it is not observed
                summary[f"{label}/{mode}"] = {"opened": sum(1 for c in cs if "connect_error" not in c),
                                              "connect_errors": sum(1 for c in cs if "connect_error" in c)}
                continue
            times = sorted(c["closed_after"] for c in cs if c.get("closed_after") is not None)
            summary[f"{label}/{mode}"] = {
                "opened": sum(1 for c in cs if "connect_error" not in c),
                "connect_errors": sum(1 for c in cs if "connect_error" in c),
                "closed_by_server": len(times),
                "median_close_s": times[len(times) // 2] if times else None,
                "max_close_s": times[-1] if times else None,
                "open_at_end": sum(1 for c in cs if "connect_error" not in c and c.get("closed_after") is None)}
    with open(a.out, "w") as f:
        json.dump({"duration": a.duration, "conns": a.conns, "summary": summary}, f)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hostile")
    h.add_argument("--envoy", type=int, required=True)
    h.add_argument("--http", type=int, required=True)
    h.add_argument("--fixtures", required=True)
    h.add_argument("--state", required=True)
    h.add_argument("--kinds", required=True)
    h.add_argument("--rate", type=float, default=200)
    h.add_argument("--duration", type=float, default=10)
    h.add_argument("--out", required=True)
    s = sub.add_parser("slow")
    s.add_argument("--target", action="append", required=True)
    s.add_argument("--conns", type=int, default=50)
    s.add_argument("--duration", type=float, default=30)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(hostile(a) if a.cmd == "hostile" else slow(a))


if __name__ == "__main__":
    main()
