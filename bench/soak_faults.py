#!/usr/bin/env python3
"""The soak test's fault schedule and its resource sampler (bench/soak.sh, issue #13).

  soak_faults.py info MODE                 prints `DURATION WARMUP GENERATIONS` of the plan
  soak_faults.py policy FILE               writes the initial (valid) policy
  soak_faults.py run MODE --t0 EPOCH ...   runs the plan: every event at t0 + its offset, logged
                                           to --log (JSON lines); writes --state for the clients
  soak_faults.py sample --pid P --t0 EPOCH --duration S --metrics URL --out CSV
                                           RSS, open fds, threads of P and a few metrics every 10 s

The plan (MODE full: 30 minutes; quick: 2 minutes, one of each fault):
  - key rotation every 3 min: publish generation g+1 next to g, 45 s later (past the JWKS max-age
    of 30 s) the clients switch to g+1's tokens, 45 s after that g is removed from the JWKS;
  - JWKS endpoint down 60 s (refresh_min 10 s < 60 s < max_stale 120 s), by turns connection
    refused, 503, accepting and never answering;
  - PostgreSQL stopped 45 s (membership cache_ttl 15 s, max_stale 5 m), then started again;
  - introspection endpoint hanging 60 s (introspection cache_ttl 1 h, timeout 250 ms);
  - policy file rewritten every 2 min, by turns an equivalent valid version and an invalid one
    (unknown key, duplicate rule name, YAML syntax error, tenant_param not in the path, unknown
    issuer); the reload counters are read before and 6 s after each; some valid rewrites fall
    inside an introspection hang (opaque tokens cached before must stay 200 through the reload);
  - hostile bursts (every hostile kind of soak_attack.py) and unknown-kid storms (30 s);
  - slow clients (idle, trickling, never reading) on Envoy and both citadel-authz listeners.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def plan(mode):
    """(duration, warm-up, generations, [(t, action, args)])."""
    if mode == "quick":
        ev = [
            (20, "publish", {"gens": [0, 1]}),
            (22, "policy", {"valid": True}),
            (45, "policy", {"valid": False}),
            (25, "storm", {"duration": 25, "rate": 300}),
            (30, "pg_stop", {}),
            (35, "hostile", {"duration": 15, "rate": 150}),
            (40, "slow", {"duration": 30, "conns": 40}),
            (55, "pg_start", {}),
            (60, "intro_hang", {}),
            (70, "switch", {"gen": 1}),
            (75, "policy", {"valid": True}),  # while introspection hangs: cached answers must survive
            (80, "publish", {"gens": [1]}),
            (85, "intro_ok", {}),
            (85, "jwks_down", {"mode": "refuse"}),
            (95, "policy", {"valid": False}),
            (100, "hostile", {"duration": 10, "rate": 150}),
            (110, "jwks_up", {}),
        ]
        return 120, 20, 2, sorted(ev, key=lambda e: e[0])
    ev = []
    modes = ["refuse", "503", "hang"]
    for k in range(9):
        p = 150 + 180 * k
        ev += [(p, "publish", {"gens": [k, k + 1]}), (p + 45, "switch", {"gen": k + 1}),
               (p + 90, "publish", {"gens": [k + 1]})]
        if k % 2 == 0:
            ev += [(p + 100, "jwks_down", {"mode": modes[(k // 2) % 3]}), (p + 160, "jwks_up", {}),
                   (p + 50, "pg_stop", {}), (p + 95, "pg_start", {})]
        else:
            ev += [(p + 100, "storm", {"duration": 30, "rate": 300}),
                   (p + 50, "intro_hang", {}), (p + 110, "intro_ok", {})]
    # Valid ones at 170 + 240 j: those at 410 and 1130 fall in the middle of introspection hangs.
    for i, t in enumerate(range(170, 1780, 120)):
        ev.append((t, "policy", {"valid": i % 2 == 0}))
    for t in (330, 630, 930, 1230, 1530):
        ev.append((t, "hostile", {"duration": 20, "rate": 150}))
    for t in (700, 1400):
        ev.append((t, "slow", {"duration": 60, "conns": 50}))
    return 1800, 120, 10, sorted(ev, key=lambda e: e[0])


# --- policy versions --------------------------------------------------------------------------

BASE_RULES = """\
  - name: health
    paths: [/healthz]
    methods: [GET]
    public: true
  - name: orders-read
    paths: [/api/orders/**]
    methods: [GET, HEAD]
    roles_any: [reader, orders:write]
  - name: tenant-data
    paths: ["/api/tenants/{tenant}/**"]
    tenant_param: tenant
    roles_any: [member, admin]
  - name: admin
    paths: [/api/admin/**]
    roles_all: [admin]
    issuers: [soak]
"""


def valid_policy(rev):
    """Equivalent for the soak's traffic: one more rule on a path nobody requests."""
    return (f"# soak policy, revision {rev} (valid)\nrules:\n" + BASE_RULES
            + f"  - name: svc-{rev}\n    paths: [/api/svc{rev}/**]\n    roles_any: [svc:read]\n")


INVALID = [
    ("unknown key", lambda r: valid_policy(r).replace("roles_any: [reader, orders:write]",
                                                      "rolez_any: [reader, orders:write]")),
    ("duplicate rule name", lambda r: valid_policy(r).replace(f"name: svc-{r}", "name: admin")),
    ("YAML syntax error", lambda r: valid_policy(r) + "  - name: [unterminated\n"),
    ("tenant_param not in the path", lambda r: valid_policy(r).replace(
        'paths: ["/api/tenants/{tenant}/**"]', "paths: [/api/tenants/**]")),
    ("unknown issuer", lambda r: valid_policy(r).replace("issuers: [soak]", "issuers: [nobody]")),
]


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- metrics ------------------------------------------------------------------------------------

def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()
    except OSError:
        return None


def metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (None if no text)."""
    if text is None:
        return None
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            try:
                total += float(m.group(3))
            except ValueError:
                pass
    return total


# --- run ------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, a):
        self.a = a
        self.t0 = a.t0
        self.lock = threading.Lock()
        self.log_f = open(a.log, "w")
        self.state = {"gen": 0, "windows": {}}
        self.threads = []
        self.policy_rev = 0
        self.invalid_i = 0
        self.attack_n = 0
        self.children = []
        self.write_state()
        # Stopped by soak.sh's cleanup (SIGTERM): the attack clients go too.
        signal.signal(signal.SIGTERM, self.stop)

    def stop(self, *_):
        for p in self.children:
            if p.poll() is None:
                p.kill()
        os._exit(143)

    def rel(self):
        return round(time.time() - self.t0, 2)

    def log(self, event, **kw):
        with self.lock:
            self.log_f.write(json.dumps({"t": self.rel(), "wall": round(time.time(), 3), "event": event, **kw}) + "\n")
            self.log_f.flush()
        print(f"[soak {time.strftime('%H:%M:%S')} t={self.rel():.0f}s] {event} {kw if kw else ''}",
              file=sys.stderr, flush=True)

    def write_state(self):
        with self.lock:
            tmp = self.a.state + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.state, f)
            os.replace(tmp, self.a.state)

    def window(self, name, start):
        w = self.state["windows"].setdefault(name, [])
        if start:
            w.append([time.time(), None])
        elif w and w[-1][1] is None:
            w[-1][1] = time.time()
        self.write_state()

    def ctl(self, path):
        req = urllib.request.Request(self.a.ctl + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status

    def bg(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    # actions
    def do_publish(self, gens):
        self.ctl("/jwks/publish?gens=" + ",".join(map(str, gens)))
        self.log("jwks_publish", gens=gens)

    def do_switch(self, gen):
        self.state["gen"] = gen
        self.write_state()
        self.log("tokens_switch", gen=gen)

    def do_jwks_down(self, mode):
        self.window("jwks_down", True)
        self.ctl(f"/jwks/down?mode={mode}")
        self.log("jwks_down", mode=mode)

    def do_jwks_up(self):
        self.ctl("/jwks/up")
        self.window("jwks_down", False)
        self.log("jwks_up")

    def do_intro_hang(self):
        self.window("intro_hang", True)
        self.ctl("/intro/hang")
        self.log("introspection_hang")

    def do_intro_ok(self):
        self.ctl("/intro/ok")
        self.window("intro_hang", False)
        self.log("introspection_ok")

    def shell(self, event, cmd, window_start):
        def go():
            if window_start:
                self.window("pg_down", True)
            t = time.time()
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
            if not window_start:
                self.window("pg_down", False)
            self.log(event, rc=r.returncode, took_s=round(time.time() - t, 2),
                     stderr=r.stderr[-300:] if r.returncode else "")
        self.bg(go)

    def do_pg_stop(self):
        self.shell("pg_stop", self.a.pg_stop, True)

    def do_pg_start(self):
        self.shell("pg_start", self.a.pg_start, False)

    def do_policy(self, valid):
        self.policy_rev += 1
        rev = self.policy_rev
        if valid:
            what, text = "valid (equivalent)", valid_policy(rev)
        else:
            what, make = INVALID[self.invalid_i % len(INVALID)]
            self.invalid_i += 1
            text = make(rev)
        m0 = scrape(self.a.metrics)
        write_atomic(self.a.policy, text)
        self.log("policy_write", valid=valid, what=what, rev=rev)

        def check():
            time.sleep(6)
            m1 = scrape(self.a.metrics)
            ok = error = None
            if m0 is not None and m1 is not None:
                ok = metric(m1, "citadel_authz_config_reloads_total", outcome="ok") - \
                    metric(m0, "citadel_authz_config_reloads_total", outcome="ok")
                error = metric(m1, "citadel_authz_config_reloads_total", outcome="error") - \
                    metric(m0, "citadel_authz_config_reloads_total", outcome="error")
            passed = ok is not None and ((ok >= 1 and error == 0) if valid else (error >= 1 and ok == 0))
            self.log("policy_reload", valid=valid, what=what, rev=rev, reloads_ok=ok, reloads_error=error,
                     passed=passed)
        self.bg(check)

    def attack(self, event, args, duration):
        self.attack_n += 1
        out = os.path.join(self.a.work, f"attack-{self.attack_n}-{event}.json")
        cmd = ["taskset", "-c", "0", sys.executable, os.path.join(HERE, "soak_attack.py")] + args + ["--out", out]

        def go():
            self.window(event, True)
            self.log(event + "_start", duration=duration, out=os.path.basename(out))
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.children.append(proc)
            _, err = proc.communicate()
            self.window(event, False)
            self.log(event + "_end", rc=proc.returncode, out=os.path.basename(out), stderr=(err or "")[-500:])
        self.bg(go)

    def hostile_args(self, kinds, rate, duration):
        return ["hostile", "--envoy", str(self.a.envoy_port), "--http", str(self.a.http_port),
                "--fixtures", self.a.fixtures, "--state", self.a.state, "--kinds", kinds,
                "--rate", str(rate), "--duration", str(duration)]

    def do_hostile(self, duration, rate):
        kinds = "tokens,garbage,tokens,oversized_header,tokens,multi_auth,bad_path,basic,forward_auth"
        self.attack("hostile", self.hostile_args(kinds, rate, duration), duration)

    def do_storm(self, duration, rate):
        self.attack("storm", self.hostile_args("storm", rate, duration), duration)

    def do_slow(self, duration, conns):
        a = self.a
        args = ["slow", "--conns", str(conns), "--duration", str(duration),
                # 500 pipelined requests into Envoy, not 20,000: each one is a check there, and
                # Envoy answers a non-reader into megabytes of loopback socket buffer, so 20,000
                # made this "slow" client a flood of ~60k checks at the rate of the main load
                # (measured: Envoy's downstream_rq_total) and tested CPU headroom instead.
                # 500 still overrun the client's 4 KiB receive buffer.
                "--target", f"envoy=127.0.0.1:{a.envoy_port},http,500",
                "--target", f"citadel_http=127.0.0.1:{a.http_port}",
                "--target", f"citadel_grpc=127.0.0.1:{a.grpc_port},h2"]
        self.attack("slow", args, duration)

    def run(self, events, duration):
        for t, action, kw in events:
            delay = self.t0 + t - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                getattr(self, "do_" + action)(**kw)
            except Exception as e:  # a failed action is logged; the soak goes on
                self.log("action_failed", action=action, error=repr(e))
        delay = self.t0 + duration - time.time()
        if delay > 0:
            time.sleep(delay)
        for t in self.threads:
            t.join(timeout=120)
        self.log("schedule_done")


def cpu_s(pid, tck):
    try:
        with open(f"/proc/{pid}/stat") as s:
            fields = s.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tck
    except (OSError, IndexError, ValueError):
        return None


def cmd_sample(a):
    others = [o.split("=", 1) for o in a.other]
    with open(a.out, "w") as f:
        f.write("t,rss_mb,fds,threads,token_cache_entries,jwks_fetch_ok,jwks_fetch_error,"
                "membership_hit,membership_miss,membership_stale,membership_error,introspection_calls,"
                "reloads_ok,reloads_error,ready,citadel_cpu_pct,loadavg1,"
                + ",".join(f"{n}_cpu_pct" for n, _ in others) + "\n")
        f.flush()
        nxt = a.t0
        end = a.t0 + a.duration
        tck = os.sysconf("SC_CLK_TCK")
        last_cpu = last_t = None
        last_other = [None] * len(others)
        while nxt <= end + 0.01:
            delay = nxt - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                with open(f"/proc/{a.pid}/status") as s:
                    st = s.read()
                rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1)) / 1024
                threads = int(re.search(r"Threads:\s+(\d+)", st).group(1))
                fds = len(os.listdir(f"/proc/{a.pid}/fd"))
                with open(f"/proc/{a.pid}/stat") as s:
                    fields = s.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / tck  # utime + stime
                with open("/proc/loadavg") as s:
                    load1 = s.read().split()[0]
            except (OSError, AttributeError, IndexError, ValueError):
                f.write(f"{round(time.time() - a.t0, 1)}" + "," * (16 + len(others)) + "\n")
                f.flush()
                nxt += a.interval
                continue
            m = scrape(a.metrics)
            vals = [metric(m, "citadel_authz_token_cache_entries"),
                    metric(m, "citadel_authz_jwks_fetches_total", outcome="ok"),
                    metric(m, "citadel_authz_jwks_fetches_total", outcome="error")]
            vals += [metric(m, "citadel_authz_membership_lookups_total", outcome=o)
                     for o in ("hit", "miss", "stale", "error")]
            vals += [metric(m, "citadel_authz_introspection_calls_total"),
                     metric(m, "citadel_authz_config_reloads_total", outcome="ok"),
                     metric(m, "citadel_authz_config_reloads_total", outcome="error"),
                     metric(m, "citadel_authz_ready")]
            cells = ["" if v is None else str(int(v)) for v in vals]
            now = time.time()
            pct = "" if last_cpu is None else f"{100 * (cpu - last_cpu) / (now - last_t):.0f}"
            extra = []
            for i, (_, opid) in enumerate(others):
                c = cpu_s(opid, tck)
                extra.append("" if c is None or last_other[i] is None else f"{100 * (c - last_other[i]) / (now - last_t):.0f}")
                last_other[i] = c
            last_cpu, last_t = cpu, now
            f.write(f"{round(now - a.t0, 1)},{rss:.1f},{fds},{threads}," + ",".join(cells) + f",{pct},{load1}," + ",".join(extra) + "\n")
            f.flush()
            nxt += a.interval


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info")
    i.add_argument("mode")
    pol = sub.add_parser("policy")
    pol.add_argument("file")
    r = sub.add_parser("run")
    r.add_argument("mode")
    for name in ("--log", "--state", "--ctl", "--metrics", "--policy", "--pg-stop", "--pg-start",
                 "--work", "--fixtures"):
        r.add_argument(name, required=True)
    for name in ("--envoy-port", "--http-port", "--grpc-port"):
        r.add_argument(name, type=int, required=True)
    r.add_argument("--t0", type=float, required=True)
    s = sub.add_parser("sample")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--t0", type=float, required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--interval", type=float, default=10)
    s.add_argument("--metrics", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--other", action="append", default=[], help="NAME=PID: also sample its CPU")
    a = p.parse_args()
    if a.cmd == "info":
        d, w, g, _ = plan(a.mode)
        print(d, w, g)
    elif a.cmd == "policy":
        write_atomic(a.file, valid_policy(0))
    elif a.cmd == "run":
        d, _, _, events = plan(a.mode)
        Runner(a).run(events, d)
    else:
        cmd_sample(a)


if __name__ == "__main__":
    main()
