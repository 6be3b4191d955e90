#!/usr/bin/env python3
"""Helpers for bench/run.sh: config generation, wrk output parsing, medians and the report.

  tool.py gen WORK_DIR                      write Envoy/citadel-authz configs and policies
  tool.py wrk FILE SCENARIO REP             parse one wrk run, print a JSON result line
  tool.py loadgen FILE SCENARIO REP T0 T1 CLK_TCK   loadgen output + server CPU ticks -> JSON
  tool.py rss FILE RSS0_MB RSS1_MB N          memory result line
  tool.py opaque N FILE PREFIX               N new opaque tokens (opq_PREFIX-i_RANDOM), one a line
  tool.py metric FILE NAME [k=v ...]         sum of a metric's samples in a /metrics dump
  tool.py storm FILE SAMPLES POOL LOOKUPS USERS OPENED   PostgreSQL storm result line
  tool.py burst FILE SERVER_CALLS METRIC_CALLS TOKENS   introspection burst result line
  tool.py report RESULTS.jsonl CRITERION_DIR OUT.md MODE   medians, ratios, targets -> markdown
Ports and names come from the environment set by run.sh.
"""
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LG_STREAMS = 64  # run.sh's LG_CONC, for the row labels


def env(name):
    return os.environ[name]


def fill(template, values):
    with open(os.path.join(HERE, "templates", template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@" + k + "@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        sys.exit(f"gen: {template}: unfilled placeholders {left}")
    return text


def policy(n):
    """n rules; the one every bench request hits (`orders-read`) is the last."""
    out = ["rules:"]
    for i in range(n - 1):
        out += [
            f"  - name: svc{i}",
            f'    paths: ["/api/svc{i}/items/{{id}}/**"]',
            "    methods: [GET, POST]",
            f"    roles_any: [svc{i}:read, admin]",
        ]
    out += [
        "  - name: orders-read",
        '    paths: ["/api/orders/**"]',
        "    methods: [GET, HEAD]",
        "    roles_any: [reader, orders:write]",
    ]
    return "\n".join(out) + "\n"


def gen(work):
    with open(os.path.join(work, "fixtures", "jwks.json")) as f:
        jwks = json.dumps(json.load(f), separators=(",", ":"))
    common = {
        "ADMIN_PORT": env("ENVOY_ADMIN_PORT"),
        "LISTEN_PORT": env("ENVOY_PORT"),
    }
    files = {
        "envoy-a.yaml": fill("envoy-direct.yaml", common),
        "envoy-b-off.yaml": fill("envoy-jwt.yaml", {**common, "ISSUER": env("ISSUER"),
                                                      "AUDIENCE": env("AUDIENCE"), "JWKS": jwks,
                                                      "JWT_CACHE": ""}),
        "envoy-b-on.yaml": fill("envoy-jwt.yaml", {**common, "ISSUER": env("ISSUER"),
                                                     "AUDIENCE": env("AUDIENCE"), "JWKS": jwks,
                                                     "JWT_CACHE": "jwt_cache_config: { jwt_cache_size: "
                                                     + env("JWT_CACHE_SIZE") + " }"}),
        "envoy-c.yaml": fill("envoy-ext-authz.yaml", {**common, "AUTHZ_PORT": env("NOOP_PORT")}),
        # (c') noop_authz --identity: citadel-authz's answer without its decision work.
        "envoy-c-id.yaml": fill("envoy-ext-authz.yaml", {**common, "AUTHZ_PORT": env("NOOP_ID_PORT")}),
        "envoy-d.yaml": fill("envoy-ext-authz.yaml", {**common, "AUTHZ_PORT": env("GRPC_PORT")}),
        "policy-10.yaml": policy(10),
        "policy-1000.yaml": policy(1000),
    }
    base = {"GRPC_PORT": env("GRPC_PORT"), "HTTP_PORT": env("HTTP_PORT"),
            "JWKS_PORT": env("JWKS_PORT"), "ISSUER": env("ISSUER"), "AUDIENCE": env("AUDIENCE")}
    for n in (10, 1000):
        files[f"citadel-{n}.yaml"] = fill("citadel-authz.yaml", {
            **base, "POLICY_FILE": f"policy-{n}.yaml", "INTROSPECTION": ""})
    # #11: the same issuer also introspects opaque tokens at the suite's own RFC 7662 server
    # (bench/introspect_server.py); JWTs are still verified by signature (`tokens: opaque`).
    files["citadel-intro.yaml"] = fill("citadel-authz.yaml", {
        **base, "POLICY_FILE": "policy-10.yaml", "INTROSPECTION":
        "    introspection:\n"
        f"      endpoint: http://127.0.0.1:{env('INTRO_PORT')}/introspect\n"
        "      client_id: citadel-bench\n"
        "      client_secret_env: CITADEL_BENCH_INTROSPECTION_SECRET\n"
        "      tokens: opaque\n"})
    # The membership store from a file: every bench subject (user-N, and the storm's 10k) is listed, as a store for a
    # real tenant directory would list them; the 1-token file's user-0 among them.
    files["members.yaml"] = "members:\n" + "".join(
        f"  - subject: user-{i}\n    tenants:\n      acme: [member]\n      \"*\": [support]\n"
        for i in range(max(int(env("NTOK")), int(env("STORM")))))
    files["citadel-members.yaml"] = files["citadel-10.yaml"] + "membership:\n  file: members.yaml\n"
    # #13: both at once, as a user of SPEC §8 and §9 runs them: opaque tokens introspected, then
    # roles and tenants from the membership file.
    files["citadel-intro-members.yaml"] = files["citadel-intro.yaml"] + "membership:\n  file: members.yaml\n"
    # #10: the same memberships in the suite's PostgreSQL (the README's example schema and query).
    # `capacity: 0`: no membership cache, every check is a query; `storm`: a large cache, started
    # cold, for the 10k-new-users-at-once run.
    pg = ("membership:\n  postgres:\n    url_env: CITADEL_AUTHZ_DATABASE_URL\n"
          "    query: SELECT tenant, role FROM memberships WHERE issuer = $1 AND subject = $2\n"
          "    notify_channel: citadel_membership\n"
          f"    pool_size: {env('PG_POOL')}\n")
    files["citadel-pg-uncached.yaml"] = files["citadel-10.yaml"] + pg + "  capacity: 0\n"
    files["citadel-pg-storm.yaml"] = files["citadel-10.yaml"] + pg + "  capacity: 100000\n"
    # Opaque tokens (no two dots, so not JWTs): `opq_<sub>_<random>`, the server's answer carries
    # that sub.
    rnd = os.urandom(8).hex()
    files["fixtures/tokens-opaque-1.txt"] = f"opq_user-0_{rnd}\n"
    for name, text in files.items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)


def to_us(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return None
    x = float(m.group(1))
    return x * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]


def steal_pct(steal_ticks, tck, seconds):
    """CPU 1's steal time (another guest on the host's CPU) as a share of the repetition."""
    if steal_ticks is None or not seconds:
        return None
    return round(int(steal_ticks) / int(tck) / seconds * 100, 2)


def parse_wrk(path, scenario, rep, steal_ticks=None, tck=100, envoy_ticks="", authz_ticks=""):
    """wrk's figures, CPU 1's steal time, and Envoy's and the authorization server's CPU time
    per request (both on CPU 1; absent when not measured)."""
    text = open(path).read()
    res = {"scenario": scenario, "rep": int(rep), "tool": "wrk"}
    m = re.search(r"requests in ([\d.]+)s", text)
    res["steal_pct"] = steal_pct(steal_ticks, tck, float(m.group(1)) if m else None)
    m = re.search(r"(\d+) requests in", text)
    n = max(int(m.group(1)), 1) if m else 1
    for key, ticks in (("envoy_cpu_us_per_req", envoy_ticks), ("authz_cpu_us_per_req", authz_ticks)):
        if ticks:
            res[key] = int(ticks) / int(tck) * 1e6 / n
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:.*", text)
    res["socket_errors"] = m.group(0) if m else ""
    for q, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(r"^\s+" + q + r"%\s+(\S+)", text, re.M)
        res[key] = to_us(m.group(1)) if m else None
    print(json.dumps(res))


def parse_loadgen(path, scenario, rep, t0, t1, tck, steal_ticks=None):
    """One loadgen JSON line plus the server's CPU time (utime+stime ticks) over the run, and
    CPU 1's steal time over it."""
    with open(path) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    cpu_s = (int(t1) - int(t0)) / int(tck)
    r.update(scenario=scenario, rep=int(rep), tool="loadgen", server_cpu_s=cpu_s,
             cpu_us_per_check=cpu_s * 1e6 / max(r["requests"], 1),
             steal_pct=steal_pct(steal_ticks, tck, r.get("elapsed_s")))
    print(json.dumps(r))


def parse_rss(path, rss0, rss1, n):
    with open(path) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    print(json.dumps({"scenario": "rss", "rep": 1, "rss_start_mb": float(rss0),
                      "rss_mb": float(rss1), "tokens": int(n), "requests": r["requests"],
                      "ok": r["ok"], "denied": r["denied"], "errors": r["errors"]}))


def opaque(n, path, prefix):
    """n new opaque tokens (never seen by the server): `opq_<prefix>-<i>_<random>`."""
    rnd = os.urandom(8).hex()
    with open(path, "w") as f:
        for i in range(int(n)):
            f.write(f"opq_{prefix}-{i}_{rnd}\n")


def metric(path, name, *labels):
    """Sum of the samples of `name` in a Prometheus text file whose labels include every k=v."""
    want = [tuple(l.split("=", 1)) for l in labels]
    total = 0.0
    with open(path) as f:
        for line in f:
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in want):
                total += float(m.group(3))
    print(int(total) if total.is_integer() else total)


def samples_max(path):
    """psql \\watch output, one `total|active` line per sample -> (max total, max active, n)."""
    tot, act, n = 0, 0, 0
    with open(path) as f:
        for line in f:
            m = re.fullmatch(r"(\d+)\|(\d+)", line.strip())
            if m:
                n += 1
                tot, act = max(tot, int(m.group(1))), max(act, int(m.group(2)))
    return tot, act, n


def parse_storm(path, samples, pool, lookups, users, opened):
    with open(path) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    tot, act, n = samples_max(samples)
    r.update(scenario="pg_storm", rep=1, tool="loadgen", pool_size=int(pool), max_conns=tot,
             max_active=act, samples=n, lookups=int(float(lookups)), users=int(users),
             opened=int(opened))
    print(json.dumps(r))


def parse_burst(path, server_calls, metric_calls, tokens):
    with open(path) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    r.update(scenario="intro_burst", rep=1, tool="loadgen", server_calls=int(server_calls),
             metric_calls=int(float(metric_calls)), tokens=int(tokens))
    print(json.dumps(r))


# --------------------------------------------------------------------------------------------
# Report

def load(results):
    by = {}
    with open(results) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                by.setdefault(r["scenario"], []).append(r)
    return by


def med(by, scenario, key):
    vals = [r[key] for r in by.get(scenario, []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def crit(cdir, group, name):
    p = os.path.join(cdir, group, name, "new", "estimates.json")
    try:
        with open(p) as f:
            return json.load(f)["median"]["point_estimate"]  # ns
    except (OSError, KeyError, ValueError):
        return None


def fmt(x, unit="", digits=0):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def verdict(value, target, higher_is_better=True):
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "**pass**" if ok else "**miss**"


def report(results, cdir, out, mode):
    by = load(results)
    algs = ["ES256", "RS256", "EdDSA"]
    rows = []  # (figure, median, baseline, ratio, target, verdict)
    bad = [s for s, rs in by.items() for r in rs
           if r.get("non2xx") or r.get("errors") or r.get("denied")]

    a = med(by, "env_a", "rps")
    c = med(by, "env_c", "rps")
    rows.append(("(a) Envoy direct_response, no auth", fmt(a, " req/s"), "—", "—", "—", ""))
    rows.append(("(c) Envoy → noop_authz", fmt(c, " req/s"), fmt(a, " (a)"),
                 fmt(ratio(c, a), "×", 2), "—", ""))
    for alg in algs:
        boff = med(by, f"env_b_off_{alg}", "rps")
        bon = med(by, f"env_b_on_{alg}", "rps")
        d = med(by, f"env_d_{alg}", "rps")
        e = med(by, f"env_e_{alg}", "rps")
        rows.append((f"(b) {alg} Envoy jwt_authn+rbac, cache off, rotating tokens", fmt(boff, " req/s"),
                     fmt(c, " (c)"), fmt(ratio(boff, c), "×", 2), "—", ""))
        rows.append((f"(b) {alg} Envoy jwt_authn+rbac, cache on, rotating tokens", fmt(bon, " req/s"),
                     fmt(boff, " (b off)"), fmt(ratio(bon, boff), "×", 2), "—", ""))
        rows.append((f"(d) {alg} Envoy → citadel-authz, one token", fmt(d, " req/s"), fmt(c, " (c)"),
                     fmt(ratio(d, c), "×", 2), "≥ 0.95", verdict(ratio(d, c), 0.95)))
        t = 0.70 if alg == "ES256" else None
        rows.append((f"(e) {alg} Envoy → citadel-authz, rotating tokens", fmt(e, " req/s"), fmt(c, " (c)"),
                     fmt(ratio(e, c), "×", 2), "≥ 0.70" if t else "—",
                     verdict(ratio(e, c), t) if t else ""))
        rows.append((f"(e) {alg} vs Envoy's own JWT (cache off)", fmt(e, " req/s"), fmt(boff, " (b off)"),
                     fmt(ratio(e, boff), "×", 2), "≥ 1.00", verdict(ratio(e, boff), 1.0)))
        ed, ad = (med(by, f"env_d_{alg}", k) for k in ("envoy_cpu_us_per_req", "authz_cpu_us_per_req"))
        ec, ac = (med(by, "env_c", k) for k in ("envoy_cpu_us_per_req", "authz_cpu_us_per_req"))
        if None not in (ed, ad, ec, ac):
            rows.append((f"(d) {alg} CPU per request: Envoy + authz server", f"{ed:.1f} + {ad:.1f} µs",
                         f"{ec:.1f} + {ac:.1f} µs (c)", fmt(ratio(ed + ad, ec + ac), "×", 2), "—", ""))
        p99d = med(by, f"env_d_{alg}", "p99_us")
        p99c = med(by, "env_c", "p99_us")
        rows.append((f"(d) {alg} wrk p99 (closed loop)", fmt(p99d, " µs"), fmt(p99c, " µs (c)"),
                     fmt(ratio(p99d, p99c), "×", 2), "—", ""))

    # (c'): the same three-way comparison, interleaved — Envoy → noop, Envoy → noop that answers
    # like citadel-authz (identity headers + dynamic metadata), Envoy → citadel-authz.
    ci, cid, di = (med(by, k, "rps") for k in ("env_c_i", "env_cid_i", "env_d_i"))
    if None not in (ci, cid, di):
        rows.append(("(c′) Envoy → noop_authz --identity (citadel-authz's answer, no decision)",
                     fmt(cid, " req/s"), fmt(ci, " (c) beside it"), fmt(ratio(cid, ci), "×", 2), "—", ""))
        rows.append(("(d) ES256 one token vs (c′): what citadel-authz's decision costs",
                     fmt(di, " req/s"), fmt(cid, " (c′) beside it"), fmt(ratio(di, cid), "×", 2), "—", ""))
        for label, k in (("(c)", "env_c_i"), ("(c′)", "env_cid_i"), ("(d) ES256", "env_d_i")):
            e, a = (med(by, k, x) for x in ("envoy_cpu_us_per_req", "authz_cpu_us_per_req"))
            if None not in (e, a):
                rows.append((f"{label} beside each other: CPU per request, Envoy + authz server",
                             f"{e:.1f} + {a:.1f} µs", "—", "—", "—", ""))

    f = med(by, "env_f_opaque_members", "rps")
    # Its own baseline, measured interleaved with it (c f c f …); env_c in runs before that.
    cf = med(by, "env_c_f", "rps")
    cf, cf_name = (cf, "(c) beside it") if cf is not None else (c, "(c)")
    rows.append(("(f) Envoy → citadel-authz, membership file + one cached opaque token", fmt(f, " req/s"),
                 fmt(cf, f" {cf_name}"), fmt(ratio(f, cf), "×", 2), "≥ 0.95", verdict(ratio(f, cf), 0.95)))
    # Where the difference goes: Envoy and the authorization server share CPU 1.
    for who, key in (("Envoy", "envoy_cpu_us_per_req"), ("the authz server", "authz_cpu_us_per_req")):
        fv = med(by, "env_f_opaque_members", key)
        cv = med(by, "env_c_f" if cf_name != "(c)" else "env_c", key)
        rows.append((f"(f) CPU per request of {who} (vs the same in (c))", fmt(fv, " µs", 2),
                     fmt(cv, " µs (c)", 2), fmt(ratio(fv, cv), "×", 2), "—", ""))

    n_rps = med(by, "srv_noop_closed", "rps")
    n_cpu = med(by, "srv_noop_closed", "cpu_us_per_check")
    for alg in algs:
        s_rps = med(by, f"srv_citadel_1_{alg}_closed", "rps")
        s_cpu = med(by, f"srv_citadel_1_{alg}_closed", "cpu_us_per_check")
        rows.append((f"gRPC alone, {alg} one token: throughput", fmt(s_rps, " checks/s"),
                     fmt(n_rps, " (noop)"), fmt(ratio(s_rps, n_rps), "×", 2), "—", ""))
        extra = None if s_cpu is None or n_cpu is None else s_cpu - n_cpu
        rows.append((f"gRPC alone, {alg} one token: extra CPU per check (saturated)",
                     fmt(extra, " µs", 2), fmt(n_cpu, " µs (noop)", 2), fmt(ratio(s_cpu, n_cpu), "×", 2),
                     "≤ 5 µs", verdict(extra, 5.0, False)))
        r_rps = med(by, f"srv_citadel_N_{alg}_closed", "rps")
        r_cpu = med(by, f"srv_citadel_N_{alg}_closed", "cpu_us_per_check")
        rows.append((f"gRPC alone, {alg} rotating tokens: throughput", fmt(r_rps, " checks/s"),
                     fmt(n_rps, " (noop)"), fmt(ratio(r_rps, n_rps), "×", 2), "—", ""))
        rows.append((f"gRPC alone, {alg} rotating tokens: CPU per check", fmt(r_cpu, " µs", 2),
                     fmt(n_cpu, " µs (noop)", 2), fmt(ratio(r_cpu, n_cpu), "×", 2), "—", ""))
        rows.append((f"gRPC alone, {alg} rotating tokens vs one token: CPU per check", fmt(r_cpu, " µs", 2),
                     fmt(s_cpu, " µs (one token)", 2), fmt(ratio(r_cpu, s_cpu), "×", 2), "≤ 1.10",
                     verdict(ratio(r_cpu, s_cpu), 1.10, False)))
    u_rps = med(by, "srv_citadel_uncached", "rps")
    u_cpu = med(by, "srv_citadel_uncached", "cpu_us_per_check")
    c_cpu = med(by, "srv_citadel_1_ES256_closed", "cpu_us_per_check")
    rows.append(("gRPC alone, ES256 every token new (uncached): throughput", fmt(u_rps, " checks/s"),
                 fmt(n_rps, " (noop)"), fmt(ratio(u_rps, n_rps), "×", 2), "—", ""))
    rows.append(("gRPC alone, ES256 every token new (uncached): CPU per check", fmt(u_cpu, " µs", 2),
                 fmt(c_cpu, " µs (cached)", 2), fmt(ratio(u_cpu, c_cpu), "×", 2), "—", ""))
    o_cpu = med(by, "srv_citadel_open5k", "cpu_us_per_check")
    on_cpu = med(by, "srv_noop_open5k", "cpu_us_per_check")
    extra5 = None if o_cpu is None or on_cpu is None else o_cpu - on_cpu
    rows.append(("gRPC alone, ES256 one token at 5,000 checks/s: extra CPU per check", fmt(extra5, " µs", 2),
                 fmt(on_cpu, " µs (noop)", 2), fmt(ratio(o_cpu, on_cpu), "×", 2), "≤ 5 µs",
                 verdict(extra5, 5.0, False)))
    p99 = med(by, "srv_citadel_open1k", "p99_us")
    p99n = med(by, "srv_noop_open1k", "p99_us")
    p99x = None if p99 is None or p99n is None else p99 - p99n
    rows.append(("gRPC alone, ES256 one token, open loop 1,000 checks/s: p99", fmt(p99, " µs"),
                 fmt(p99n, " µs (noop)"), fmt(ratio(p99, p99n), "×", 2), "≤ noop + 50 µs",
                 verdict(p99x, 50, False)))
    p999 = med(by, "srv_citadel_open1k", "p999_us")
    p999n = med(by, "srv_noop_open1k", "p999_us")
    rows.append(("gRPC alone, ES256 one token, open loop 1,000 checks/s: p99.9", fmt(p999, " µs"),
                 fmt(p999n, " µs (noop)"), fmt(ratio(p999, p999n), "×", 2), "—", ""))

    for alg in algs:
        cit = crit(cdir, "verify", f"{alg}_citadel")
        raw = crit(cdir, "verify", f"{alg}_raw_parsed")
        unp = crit(cdir, "verify", f"{alg}_raw_unparsed")
        rows.append((f"micro: {alg} uncached verify (parse+verify) vs raw aws-lc (key parsed once)",
                     fmt(None if cit is None else cit / 1e3, " µs", 2),
                     fmt(None if raw is None else raw / 1e3, " µs", 2),
                     fmt(ratio(cit, raw), "×", 2), "≤ 1.10", verdict(ratio(cit, raw), 1.10, False)))
        rows.append((f"micro: {alg} uncached verify vs raw aws-lc (key parsed per call)",
                     fmt(None if cit is None else cit / 1e3, " µs", 2),
                     fmt(None if unp is None else unp / 1e3, " µs", 2),
                     fmt(ratio(cit, unp), "×", 2), "—", ""))
    p10 = crit(cdir, "policy", "10_rules")
    p1k = crit(cdir, "policy", "1000_rules")
    rows.append(("micro: policy canonicalize+find+authorize, 1,000 vs 10 rules (last rule hit)",
                 fmt(None if p1k is None else p1k / 1e3, " µs", 2),
                 fmt(None if p10 is None else p10 / 1e3, " µs", 2),
                 fmt(ratio(p1k, p10), "×", 1), "≤ 1.20", verdict(ratio(p1k, p10), 1.2, False)))
    m_off = med(by, "srv_citadel_1_ES256_closed", "cpu_us_per_check")
    m_on = med(by, "srv_citadel_members_file_closed", "cpu_us_per_check")
    rows.append(("gRPC alone, ES256 one token, membership file on: CPU per check vs off",
                 fmt(m_on, " µs", 2), fmt(m_off, " µs (off)", 2), fmt(ratio(m_on, m_off), "×", 2),
                 "≤ 1.15", verdict(ratio(m_on, m_off), 1.15, False)))
    # #10: uncached membership lookups in PostgreSQL vs the file source, rotating tokens (token
    # cache warm), and the storm of new users vs pool_size.
    f_rps = med(by, "srv_citadel_members_file_N_closed", "rps")
    g_rps = med(by, "srv_citadel_members_pg_uncached_closed", "rps")
    rows.append(("gRPC alone, ES256 rotating tokens, membership PostgreSQL uncached (capacity 0): throughput",
                 fmt(g_rps, " checks/s"), fmt(f_rps, " (file)"), fmt(ratio(g_rps, f_rps), "×", 2), "—", ""))
    for q, key in (("p50", "p50_us"), ("p99", "p99_us")):
        fq = med(by, "srv_citadel_members_file_N_closed", key)
        gq = med(by, "srv_citadel_members_pg_uncached_closed", key)
        rows.append((f"gRPC alone, membership PostgreSQL uncached: {q} (closed loop, {LG_STREAMS} streams)",
                     fmt(gq, " µs"), fmt(fq, " µs (file)"), fmt(ratio(gq, fq), "×", 2), "—", ""))
    f_cpu = med(by, "srv_citadel_members_file_N_closed", "cpu_us_per_check")
    g_cpu = med(by, "srv_citadel_members_pg_uncached_closed", "cpu_us_per_check")
    rows.append(("gRPC alone, membership PostgreSQL uncached: citadel-authz CPU per check",
                 fmt(g_cpu, " µs", 2), fmt(f_cpu, " µs (file)", 2), fmt(ratio(g_cpu, f_cpu), "×", 2),
                 "—", ""))
    st = (by.get("pg_storm") or [None])[0]
    if st:
        rows.append((f"PostgreSQL storm: {st['users']:,} new users at once, max connections "
                     f"(application_name citadel-authz; {st['samples']} samples)",
                     fmt(st["max_conns"]), f"pool_size {st['pool_size']}",
                     fmt(ratio(st["max_conns"], st["pool_size"]), "×", 2), "≤ pool_size",
                     verdict(st["max_conns"], st["pool_size"], False)))
        rows.append(("PostgreSQL storm: connections the server opened (start, warm-up and storm; "
                     "log_connections)", fmt(st.get("opened")), f"pool_size {st['pool_size']}",
                     fmt(ratio(st.get("opened"), st["pool_size"]), "×", 2), "≤ pool_size",
                     verdict(st.get("opened"), st["pool_size"], False)))
        rows.append(("PostgreSQL storm: max connections running a query at once (sampled)",
                     fmt(st["max_active"]), f"pool_size {st['pool_size']}", "—", "—", ""))
        rows.append(("PostgreSQL storm: lookups (membership cache misses) / checks answered",
                     f"{st['lookups']:,} / {st['ok']:,} ok", f"{st['users']:,} users", "—", "—", ""))
        sf_rps = med(by, "storm_file", "rps")
        sf_p99 = med(by, "storm_file", "p99_us")
        rows.append(("PostgreSQL storm: throughput (all at once)", fmt(st["rps"], " checks/s"),
                     fmt(sf_rps, " (same storm, file)"), fmt(ratio(st["rps"], sf_rps), "×", 2), "—", ""))
        rows.append(("PostgreSQL storm: p99 (all at once)", fmt(st["p99_us"] / 1e3, " ms"),
                     fmt(None if sf_p99 is None else sf_p99 / 1e3, " ms (file)"),
                     fmt(ratio(st["p99_us"], sf_p99), "×", 2), "—", ""))
    else:
        rows.append(("PostgreSQL storm: max connections", "n/a", "n/a", "n/a", "≤ pool_size", "n/a"))

    # #11: opaque tokens through the suite's own RFC 7662 server.
    j_cpu = med(by, "srv_intro_jwt_1_closed", "cpu_us_per_check")
    o_cpu1 = med(by, "srv_intro_opaque_1_closed", "cpu_us_per_check")
    rows.append(("gRPC alone, one opaque token (answer cached): CPU per check vs one ES256 JWT (cached)",
                 fmt(o_cpu1, " µs", 2), fmt(j_cpu, " µs (JWT)", 2), fmt(ratio(o_cpu1, j_cpu), "×", 2),
                 "≤ 1.10", verdict(ratio(o_cpu1, j_cpu), 1.10, False)))
    j_rps = med(by, "srv_intro_jwt_1_closed", "rps")
    o_rps = med(by, "srv_intro_opaque_1_closed", "rps")
    rows.append(("gRPC alone, one opaque token (answer cached): throughput vs one ES256 JWT",
                 fmt(o_rps, " checks/s"), fmt(j_rps, " (JWT)"), fmt(ratio(o_rps, j_rps), "×", 2),
                 "—", ""))
    bu = (by.get("intro_burst") or [None])[0]
    if bu:
        rows.append((f"introspection burst: {bu['requests']:,} concurrent checks of {bu['tokens']} new "
                     "opaque tokens → calls to the IdP",
                     f"{bu['server_calls']} (server) / {bu['metric_calls']} (/metrics)",
                     f"{bu['tokens']} tokens", fmt(ratio(bu["server_calls"], bu["tokens"]), "×", 2),
                     f"= {bu['tokens']}",
                     "**pass**" if bu["server_calls"] == bu["tokens"] == bu["metric_calls"]
                     and bu["ok"] == bu["requests"] else "**miss**"))
    else:
        rows.append(("introspection burst: calls to the IdP", "n/a", "n/a", "n/a", "= 10", "n/a"))
    s10 = med(by, "srv_citadel_1_ES256_closed", "rps")
    s1k = med(by, "srv_citadel_1000rules_closed", "rps")
    rows.append(("gRPC alone, ES256 one token, 1,000 rules: time per check vs 10 rules",
                 fmt(s1k, " checks/s"), fmt(s10, " checks/s (10 rules)"),
                 fmt(ratio(s10, s1k), "×", 2), "≤ 1.20", verdict(ratio(s10, s1k), 1.2, False)))
    rss0 = med(by, "rss", "rss_start_mb")
    rss = med(by, "rss", "rss_mb")
    ntok = med(by, "rss", "tokens")
    rows.append((f"RSS after {fmt(ntok)} distinct valid tokens checked once", fmt(rss, " MB", 1),
                 fmt(rss0, " MB at start", 1), fmt(ratio(rss, rss0), "×", 2), "≤ 64 MB",
                 verdict(rss, 64, False)))

    lines = [
        f"Benchmark results ({mode} run). Medians of the repetitions; every ratio is against a",
        "baseline measured in the same run. Throughput ratios: higher is better; time/CPU/latency ratios: lower is better.",
        "",
        "| figure | median | baseline | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    steal = sorted((r["steal_pct"], s, r["rep"]) for s, rs in by.items() for r in rs
                   if r.get("steal_pct") is not None)
    if steal:
        mid = steal[len(steal) // 2][0]
        top = steal[-1]
        lines += ["", f"CPU 1 steal time (the hypervisor running another guest) over the {len(steal)} measured "
                  f"repetitions: median {mid:.1f} %, max {top[0]:.1f} % ({top[1]} repetition {top[2]})."]
    if bad:
        lines += ["", "**Warning**: non-OK answers (non-2xx, denials or errors) in: " + ", ".join(sorted(set(bad)))]
    text = "\n".join(lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)


def main():
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2])
    elif cmd == "wrk":
        parse_wrk(*sys.argv[2:9])
    elif cmd == "loadgen":
        parse_loadgen(*sys.argv[2:9])
    elif cmd == "rss":
        parse_rss(*sys.argv[2:6])
    elif cmd == "opaque":
        opaque(*sys.argv[2:5])
    elif cmd == "metric":
        metric(sys.argv[2], sys.argv[3], *sys.argv[4:])
    elif cmd == "storm":
        parse_storm(*sys.argv[2:8])
    elif cmd == "burst":
        parse_burst(*sys.argv[2:6])
    elif cmd == "report":
        report(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
