#!/usr/bin/env python3
"""Open-loop HTTP/1.1 load client of the soak test (bench/soak.sh, issue #13): requests at a fixed
rate into Envoy, whatever the answers, every answer recorded with its class and status.

  soak_load.py --port P --rate R --t0 EPOCH --duration S --fixtures DIR --state FILE --out FILE
               [--conns N] [--new-rate R]

Classes (share of --rate): jwt 70 % (GET /api/orders/42, the current generation's 10k tokens in
turn: ES256, RS256, EdDSA; expected 200), member 15 % (GET /api/tenants/acme/items/7: the role comes
only from the PostgreSQL membership store; 200), opaque 10 % (opaque tokens, introspected once and
cached; 200), deny 3 % (a valid token on /api/admin/users, which needs role admin; 403), anon 2 %
(no Authorization; 401); and at --new-rate each: member_new (a user never seen before, so a
membership lookup every time; 200, 503 when the store is down is by design) and opaque_new (an
opaque token never seen before, so an introspection call every time; 200, 503 while the
introspection endpoint hangs is by design).

Requests are scheduled at t0 + i/rate and sent on the first idle connection of --conns keep-alive
connections; latency counts from the scheduled time (no coordinated omission). When more than two
seconds of requests are waiting, new ones are dropped and counted (the client is overloaded: the
report says so). The current token generation is read from FILE (`{"gen": g}`, written by the fault
schedule at each key rotation). Output: one JSON line per second with the requests scheduled in it, and
the count of every (class, status, source) answered in it — source `c` for a body of citadel-authz's (`{"error": ...}`), `e` for
anything else (Envoy's own answers) — and the latency percentiles, then a summary line.
"""
import argparse
import asyncio
import json
import math
import os
import random
import sys
import time

try:
    import uvloop
except ImportError:  # plain asyncio is slower, still correct
    uvloop = None

CLASSES = (  # name, share of --rate, path, expected status
    ("jwt", 0.70, "/api/orders/42", 200),
    ("member", 0.15, "/api/tenants/acme/items/7", 200),
    ("opaque", 0.10, "/api/orders/42", 200),
    ("deny", 0.03, "/api/admin/users", 403),
    ("anon", 0.02, "/api/orders/42", 401),
)
NEW_CLASSES = (("member_new", "/api/tenants/acme/items/7"), ("opaque_new", "/api/orders/42"))
TIMEOUT = 5.0


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, pool):
        self.pool = pool
        self.tr = None
        self.buf = bytearray()
        self.cb = None
        self.sent_at = 0.0
        self.timed_out = False

    def connection_made(self, tr):
        self.tr = tr
        self.pool.ready(self)

    def send(self, data, cb):
        self.cb = cb
        self.sent_at = time.monotonic()
        self.tr.write(data)

    def data_received(self, data):
        self.buf += data
        buf = self.buf
        while self.cb is not None:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            try:
                status = int(head[9:12])
            except ValueError:
                status = 0
            j = head.find(b"\r\ncontent-length:")
            if j >= 0:
                k = head.find(b"\r\n", j + 2)
                n = int(head[j + 17:k if k >= 0 else len(head)])
                if len(buf) < i + 4 + n:
                    return
                body = bytes(buf[i + 4:i + 4 + n])
                del buf[:i + 4 + n]
            elif b"transfer-encoding: chunked" in head:
                e = buf.find(b"0\r\n\r\n", i + 4)
                if e < 0:
                    return
                body = bytes(buf[i + 4:e])
                del buf[:e + 5]
            else:
                body = b""
                del buf[:i + 4]
            cb, self.cb = self.cb, None
            cb(status, body)
            if b"\r\nconnection: close" in head:
                self.tr.close()
                return
            self.pool.ready(self)

    def connection_lost(self, exc):
        if self.cb is not None:
            cb, self.cb = self.cb, None
            cb("timeout" if self.timed_out else "closed", b"")
        self.pool.lost(self)


class Pool:
    """N connections to host:port, a queue of waiting requests, reconnects when one is lost."""

    def __init__(self, loop, host, port, n, backlog):
        self.loop, self.host, self.port, self.n = loop, host, port, n
        self.idle = []
        self.queue = []  # (data, cb), FIFO via index
        self.qhead = 0
        self.backlog = backlog
        self.conns = set()
        self.reconnects = 0
        self.connect_errors = 0
        self.closing = False

    async def start(self):
        await asyncio.gather(*(self.connect() for _ in range(self.n)))

    async def connect(self):
        while not self.closing:
            try:
                _, c = await self.loop.create_connection(lambda: Conn(self), self.host, self.port)
                self.conns.add(c)
                return
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.2)

    def waiting(self):
        return len(self.queue) - self.qhead

    def submit(self, data, cb):
        """False: dropped (too many waiting)."""
        if self.idle and self.waiting() == 0:
            self.idle.pop().send(data, cb)
            return True
        if self.waiting() >= self.backlog:
            return False
        self.queue.append((data, cb))
        return True

    def ready(self, c):
        if self.qhead < len(self.queue):
            data, cb = self.queue[self.qhead]
            self.queue[self.qhead] = None
            self.qhead += 1
            if self.qhead > 4096 and self.qhead * 2 > len(self.queue):
                del self.queue[:self.qhead]
                self.qhead = 0
            c.send(data, cb)
        else:
            self.idle.append(c)

    def lost(self, c):
        self.conns.discard(c)
        if c in self.idle:
            self.idle.remove(c)
        if not self.closing:
            self.reconnects += 1
            self.loop.create_task(self.connect())

    def sweep(self, now):
        for c in list(self.conns):
            if c.cb is not None and now - c.sent_at > TIMEOUT:
                c.timed_out = True
                c.tr.abort()

    def close(self):
        self.closing = True
        for c in list(self.conns):
            c.tr.close()


def source(status, body):
    if not isinstance(status, int):
        return "x"
    if status == 200:
        return "-"
    return "c" if body.startswith(b'{"error"') else "e"


def lines(path):
    with open(path) as f:
        return [l.strip() for l in f if l.strip()]


class Load:
    def __init__(self, a):
        self.a = a
        self.fx = a.fixtures
        self.gen = None
        self.state_mtime = None
        self.tokens = {}
        self.idx = {}
        self.opaque = lines(os.path.join(self.fx, "opaque.txt"))
        self.opaque_new = lines(os.path.join(self.fx, "opaque-new.txt"))
        self.new_i = {"opaque_new": 0}
        self.secs = {}  # second -> {"counts": {key: n}, "lat": [...], "sched": n, "dropped": n}
        self.totals = {}
        self.lat_hist = {}  # class -> {bucket: n}
        self.inflight = 0
        self.off_total = 0  # answers other than the class's usual status (some are by design)
        self.read_state()

    def read_state(self):
        try:
            st = os.stat(self.a.state)
        except FileNotFoundError:
            return
        if st.st_mtime_ns == self.state_mtime:
            return
        self.state_mtime = st.st_mtime_ns
        with open(self.a.state) as f:
            try:
                gen = json.load(f)["gen"]
            except (ValueError, KeyError):
                return
        if gen != self.gen:
            d = os.path.join(self.fx, f"g{gen}")
            self.tokens = {"jwt": lines(os.path.join(d, "jwt.txt")), "new": lines(os.path.join(d, "new.txt"))}
            self.gen = gen
            self.new_i["member_new"] = 0
            if not self.idx:
                n = len(self.tokens["jwt"])
                self.idx = {c: random.randrange(n) for c in ("jwt", "member", "deny")}
            print(f"soak_load: generation {gen}", file=sys.stderr, flush=True)

    def request(self, cls):
        if cls in ("jwt", "member", "deny"):
            toks = self.tokens["jwt"]
            i = self.idx[cls] = (self.idx[cls] + 1) % len(toks)
            tok = toks[i]
        elif cls == "opaque":
            # In turn, like the JWTs: every opaque token is introspected (and cached) in warm-up.
            self.idx["opaque"] = (self.idx.get("opaque", random.randrange(len(self.opaque))) + 1) % len(self.opaque)
            tok = self.opaque[self.idx["opaque"]]
        elif cls == "member_new":
            toks = self.tokens["new"]
            tok = toks[self.new_i[cls] % len(toks)]
            self.new_i[cls] += 1
        elif cls == "opaque_new":
            tok = self.opaque_new[self.new_i[cls] % len(self.opaque_new)]
            self.new_i[cls] += 1
        else:
            tok = None
        path = PATHS[cls]
        auth = f"Authorization: Bearer {tok}\r\n" if tok else ""
        return f"GET {path} HTTP/1.1\r\nHost: soak.local\r\n{auth}\r\n".encode()

    def sec(self, s):
        d = self.secs.get(s)
        if d is None:
            d = self.secs[s] = {"counts": {}, "lat": [], "sched": 0, "dropped": 0}
        return d

    def done_cb(self, cls, s, t_sched):
        self.inflight += 1

        def cb(status, body):
            self.inflight -= 1
            now = time.monotonic()
            lat = now - t_sched
            # Counted in the second the answer came: a fault's window is judged against when
            # the answer was given, not when the request was due (the client may queue).
            d = self.sec(int(now - self.mono0))
            key = f"{cls} {status} {source(status, body)}"
            d["counts"][key] = d["counts"].get(key, 0) + 1
            if status != EXPECT.get(cls):
                self.off_total += 1
            d["lat"].append(lat)
            b = int(math.log(max(lat, 1e-5) * 1e6, 1.25))
            h = self.lat_hist.setdefault(cls, {})
            h[b] = h.get(b, 0) + 1
            if status != EXPECT.get(cls) and self.sample_n.get((cls, status), 0) < 10:
                self.sample_n[(cls, status)] = self.sample_n.get((cls, status), 0) + 1
                self.samples.append({"t": round(time.time(), 3), "class": cls, "status": status,
                                     "body": body[:200].decode(errors="replace")})
        return cb

    def flush(self, out, upto):
        for s in sorted(k for k in self.secs if k < upto):
            d = self.secs.pop(s)
            lat = sorted(d["lat"])
            q = (lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 2)) if lat else (lambda p: None)
            for k, v in d["counts"].items():
                self.totals[k] = self.totals.get(k, 0) + v
            out.write(json.dumps({"sec": s, "sched": d["sched"], "dropped": d["dropped"],
                                  "counts": d["counts"], "p50_ms": q(0.5), "p99_ms": q(0.99),
                                  "max_ms": round(lat[-1] * 1e3, 2) if lat else None}) + "\n")
        out.flush()

    async def run(self):
        a = self.a
        self.samples = []  # the first 10 answers of each (class, status) other than the usual
        self.sample_n = {}
        loop = asyncio.get_running_loop()
        pool = Pool(loop, "127.0.0.1", a.port, a.conns, backlog=max(int(a.rate * 2), 100))
        await pool.start()
        mono0 = self.mono0 = time.monotonic() + (a.t0 - time.time())
        while time.monotonic() < mono0:
            await asyncio.sleep(min(0.05, mono0 - time.monotonic()))
        names = [c[0] for c in CLASSES]
        weights = [c[1] for c in CLASSES]
        end = mono0 + a.duration
        scheduled = {"main": 0, "member_new": 0, "opaque_new": 0}
        last_state = last_sweep = last_flush = last_print = mono0
        cpu0 = last_cpu = time.process_time()
        out = open(a.out, "w")
        sent_total = dropped_total = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            el = now - mono0
            s = int(el)
            d = self.sec(s)
            for key, rate in (("main", a.rate), ("member_new", a.new_rate), ("opaque_new", a.new_rate)):
                due = int(el * rate) - scheduled[key]
                if due <= 0:
                    continue
                picks = random.choices(names, weights, k=due) if key == "main" else [key] * due
                for i, cls in enumerate(picks):
                    t_sched = mono0 + (scheduled[key] + i + 1) / rate
                    d["sched"] += 1
                    if pool.submit(self.request(cls), self.done_cb(cls, s, t_sched)):
                        sent_total += 1
                    else:
                        self.inflight -= 1
                        d["dropped"] += 1
                        dropped_total += 1
                scheduled[key] += due
            if now - last_state >= 0.2:
                last_state = now
                self.read_state()
            if now - last_sweep >= 0.5:
                last_sweep = now
                pool.sweep(now)
            if now - last_flush >= 1.0:
                last_flush = now
                self.flush(out, s - 1)
            if now - last_print >= 10:
                last_print = now
                cpu = time.process_time()
                print(f"soak_load: t={el:.0f}s sent={sent_total} dropped={dropped_total} "
                      f"client CPU {100 * (cpu - last_cpu) / 10:.0f} % "
                      f"waiting={pool.waiting()} answers other than the class's usual so far="
                      f"{self.off_total} (by-design 503s included)", file=sys.stderr, flush=True)
                last_cpu = cpu
            await asyncio.sleep(0.002)
        # Let the last requests finish (each is bounded by TIMEOUT).
        deadline = time.monotonic() + TIMEOUT + 1
        while self.inflight > 0 and time.monotonic() < deadline:
            pool.sweep(time.monotonic())
            await asyncio.sleep(0.05)
        self.flush(out, 10 ** 9)
        pool.close()
        out.write(json.dumps({"summary": True, "rate": a.rate, "new_rate": a.new_rate,
                              "duration": a.duration, "conns": a.conns, "sent": sent_total,
                              "dropped": dropped_total, "unfinished": self.inflight,
                              "reconnects": pool.reconnects, "connect_errors": pool.connect_errors,
                              "totals": self.totals, "lat_hist": self.lat_hist,
                              "samples": self.samples, "uvloop": uvloop is not None,
                              "client_cpu_s": round(time.process_time() - cpu0, 1)}) + "\n")
        out.close()


PATHS = {c[0]: c[2] for c in CLASSES}
PATHS.update(dict(NEW_CLASSES))
EXPECT = {c[0]: c[3] for c in CLASSES}
EXPECT.update({c[0]: 200 for c in NEW_CLASSES})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--new-rate", type=float, default=5.0)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--fixtures", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(Load(a).run())


if __name__ == "__main__":
    main()
