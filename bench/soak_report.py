#!/usr/bin/env python3
"""The soak test's report (bench/soak.sh, issue #13): reads what the run left in WORK, writes the
markdown to OUT, prints it, exits 1 when a target is missed.

  soak_report.py WORK META.json OUT.md

WORK holds load.jsonl (soak_load.py), faults.jsonl and state.json (soak_faults.py run),
samples.csv (soak_faults.py sample), idp-stats.json (soak_idp.py /stats at the end), attack-*.json
(soak_attack.py), metrics-end.txt and citadel.log.
"""
import csv
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak_faults import metric  # noqa: E402
from soak_load import CLASSES, EXPECT, NEW_CLASSES  # noqa: E402

# 503s that are the designed answer (SPEC §8, §9): no cached answer exists for that request.
# window, seconds before it, seconds after it. After the database is back, citadel-authz's pool
# reconnects with a backoff of up to 5 s (README, membership store), and an attempt while
# PostgreSQL is still recovering can take connect_timeout (1 s) and fail: up to ~11 s.
BY_DESIGN = {"member_new": ("pg_down", 1, 12), "opaque_new": ("intro_hang", 1, 2)}


def in_window(windows, t, before, after, end_default):
    for s, e in windows:
        if s - before <= t <= (e if e is not None else end_default) + after:
            return True
    return False


def active_at(windows_all, t, end_default):
    return [name for name, ws in windows_all.items() if in_window(ws, t, 0, 2, end_default)]


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


def slope_per_10min(points):
    n = len(points)
    if n < 3:
        return None
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx * 600


def percentile_from_hist(h, q):
    total = sum(h.values())
    if not total:
        return None
    acc = 0
    for b in sorted(h, key=int):
        acc += h[b]
        if acc >= q * total:
            return 1.25 ** (int(b) + 1) / 1e3  # upper edge of the bucket, ms
    return None


def main():
    work, meta_path, out_path = sys.argv[1:4]
    meta = json.load(open(meta_path))
    t0 = meta["t0"]
    dur = meta["duration"]
    warm = meta["warmup"]
    end_wall = t0 + dur
    state = json.load(open(os.path.join(work, "state.json")))
    windows = state.get("windows", {})
    faults = [json.loads(l) for l in open(os.path.join(work, "faults.jsonl")) if l.strip()]
    secs, summary = [], {}
    with open(os.path.join(work, "load.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("summary"):
                summary = r
            else:
                secs.append(r)
    targets = []  # (name, value, target, passed)

    # --- load: classify every (second, class, status, source) ---------------------------------
    per_class = {c: {"n": 0, "expected": 0, "by_design": 0, "unexpected": 0} for c in EXPECT}
    unexpected_rows = {}  # (10 s window, class, status, src) -> n
    citadel_5xx = envoy_5xx = errors = by_design_total = 0
    status_totals = {}
    for r in secs:
        t_wall = t0 + r["sec"]
        for key, n in r["counts"].items():
            cls, status, src = key.split(" ")
            pc = per_class.setdefault(cls, {"n": 0, "expected": 0, "by_design": 0, "unexpected": 0})
            pc["n"] += n
            status_totals[status] = status_totals.get(status, 0) + n
            st = int(status) if status.isdigit() else None
            if st == EXPECT.get(cls):
                pc["expected"] += n
                continue
            if st == 503 and src == "c" and cls in BY_DESIGN:
                w, before, after = BY_DESIGN[cls]
                if in_window(windows.get(w, []), t_wall, before, after, end_wall):
                    pc["by_design"] += n
                    by_design_total += n
                    continue
            pc["unexpected"] += n
            if st is None:
                errors += n
            elif st >= 500 and src == "c":
                citadel_5xx += n
            elif st >= 500:
                envoy_5xx += n
            k = (r["sec"] // 10 * 10, cls, status, src)
            unexpected_rows[k] = unexpected_rows.get(k, 0) + n
    total = sum(pc["n"] for pc in per_class.values())
    unexpected = sum(pc["unexpected"] for pc in per_class.values())
    targets.append(("unexpected answers (non-2xx where 200 was due, or any other status than the class's)",
                    unexpected, "0", unexpected == 0))
    targets.append(("5xx from citadel-authz while a cached or stale-valid answer exists", citadel_5xx, "0",
                    citadel_5xx == 0))
    targets.append(("5xx from Envoy itself (authz call failed or timed out)", envoy_5xx, "0", envoy_5xx == 0))
    targets.append(("client errors (connection closed, 5 s timeout)", errors, "0", errors == 0))

    # --- resources --------------------------------------------------------------------------------
    samples = []
    with open(os.path.join(work, "samples.csv")) as f:
        for row in csv.DictReader(f):
            if row["rss_mb"]:
                samples.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    res = {}
    cool = [s_ for s_ in samples if s_["t"] > dur + 1]
    samples = [s_ for s_ in samples if s_["t"] <= dur + 1]
    if samples:
        after = [s for s in samples if s["t"] >= warm] or samples
        slow_w = windows.get("slow", [])
        quiet = [s for s in after if not in_window(slow_w, t0 + s["t"], 1, 12, end_wall)]
        for key in ("rss_mb", "fds", "threads", "token_cache_entries"):
            vals = [s[key] for s in samples if s[key] is not None]
            if not vals:
                continue
            res[key] = {"first": vals[0], "after_warmup": after[0][key], "max": max(vals), "last": vals[-1],
                        "idle": cool[-1][key] if cool and cool[-1][key] is not None else None,
                        "slope": slope_per_10min([(s["t"], s[key]) for s in quiet if s[key] is not None])}
        rss = res["rss_mb"]
        # A filling token cache is growth by design (bounded by its capacity): memory is judged from
        # the first sample after warm-up at which the cache is full, when the run gets there.
        cap = meta.get("token_cache_capacity")
        full = [s for s in after if cap and s["token_cache_entries"] is not None
                and s["token_cache_entries"] >= 0.98 * cap]
        base = full[0] if full else after[0]
        since = (f"at {base['t']:.0f} s, the token cache full ({cap:,})" if full
                 else f"at {warm} s; the token cache never filled")
        allowed = max(0.10 * base["rss_mb"], 8.0)
        growth = rss["last"] - base["rss_mb"]
        targets.append((f"RSS growth under load (last − {since}; allowed max(10 %, 8 MB) = {allowed:.1f} MB)",
                        f"{growth:+.1f} MB", f"≤ {allowed:.1f} MB", growth <= allowed))
        fds = res["fds"]
        if fds["idle"] is not None:
            fd_growth = fds["idle"] - fds["first"]
            targets.append((f"open fds {meta.get('cooldown', 0)} s after the load ended − at the start "
                            "(pooled HTTP connections close after 90 s idle)", f"{fd_growth:+.0f}", "≤ 5",
                            fd_growth <= 5))
        else:
            targets.append(("open fds after the load (idle sample)", "none", "≤ 5 more than at the start", False))
    else:
        targets.append(("RSS / fd samples", "none", "≥ 1", False))
    sched = summary.get("sent", 0) + summary.get("dropped", 0)
    dropped = summary.get("dropped", 0)
    targets.append(("requests never sent because 2 s of requests were already waiting (the servers fell that far behind)",
                    dropped, "≤ 0.1 % of scheduled", dropped <= 0.001 * max(sched, 1)))

    # --- JWKS fetches during unknown-kid storms -------------------------------------------------------
    idp = json.load(open(os.path.join(work, "idp-stats.json")))
    fetches = sorted(t for t, _ in idp["jwks_fetches"])
    refresh_min = meta["refresh_min_s"]
    # The cooldown runs from the start of one refetch to the next one's; a request reaches the IdP
    # a few ms after its fetch starts, so two fetches exactly refresh_min apart may arrive 9.99 s
    # apart: windows of 0.95 × refresh_min.
    span = 0.95 * refresh_min
    storm_rows = []
    for s, e in windows.get("storm", []):
        e = e if e is not None else end_wall
        ts = [t for t in fetches if s <= t <= e + 1]
        worst = 0
        for i, ti in enumerate(ts):
            worst = max(worst, sum(1 for tj in ts[i:] if tj - ti < span))
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        storm_rows.append((round(s - t0), round(e - s), len(ts), worst, min(gaps) if gaps else None))
    worst_all = max((r[3] for r in storm_rows), default=None)
    targets.append((f"JWKS fetches within any refresh_min ({refresh_min:g} s; windows of 0.95 × refresh_min) during an unknown-kid storm",
                    worst_all if worst_all is not None else "no storm", "≤ 1",
                    worst_all is not None and worst_all <= 1))
    targets.append(("fetches of a token's jku URL", idp.get("jku_hits", 0), "0", idp.get("jku_hits", 0) == 0))

    # --- policy reloads ---------------------------------------------------------------------------
    reloads = [f for f in faults if f["event"] == "policy_reload"]
    bad_reloads = [f for f in reloads if not f.get("passed")]
    targets.append(("policy rewrites handled as expected (valid → reload ok, invalid → refused, counted as error)",
                    f"{len(reloads) - len(bad_reloads)}/{len(reloads)}", "all", not bad_reloads and bool(reloads)))

    # --- hostile traffic, slow clients ---------------------------------------------------------------
    attacks = []
    for p in sorted(glob.glob(os.path.join(work, "attack-*.json")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
        try:
            attacks.append((os.path.basename(p), json.load(open(p))))
        except ValueError:
            attacks.append((os.path.basename(p), None))
    hostile_bad = 0
    hostile_sent = 0
    hostile_not_sent = 0
    hostile_rows = {}
    slow_rows = {}
    for name, d in attacks:
        if d is None:
            hostile_bad += 1
            continue
        if "results" in d:
            hostile_sent += d["sent"]
            hostile_bad += d["unexpected_count"]
            hostile_not_sent += d.get("not_sent", 0)
            for kind, counts in d["results"].items():
                row = hostile_rows.setdefault(kind, {})
                for k, n in counts.items():
                    row[k] = row.get(k, 0) + n
        else:
            for k, v in d["summary"].items():
                slow_rows.setdefault(k, []).append(v)
    expected_of = {}
    for _, d in attacks:
        if d and "expected" in d:
            expected_of.update(d["expected"])
    targets.append(("hostile requests answered otherwise than expected (any 2xx or 5xx, a wrong 4xx, no answer)",
                    hostile_bad, "0", hostile_bad == 0))
    # Not a target of its own: the main load's "requests never sent" target judges whether the
    # servers fell behind; this says how much of the attack that cost.
    targets.append(("hostile requests not sent: the attacker's 1,000-request backlog was full (not a target: see the main load's row)",
                    f"{hostile_not_sent:,} of {hostile_sent:,}", "—", None))
    ht = meta["header_timeout_s"]
    slow_ok = True
    for k, vs in slow_rows.items():
        if k.startswith("citadel_http/") and not k.endswith("/noread"):
            for v in vs:
                if v["closed_by_server"] != v["opened"] or (v["max_close_s"] or 0) > ht + 2:
                    slow_ok = False
    if slow_rows:
        targets.append((f"slow clients on citadel-authz's HTTP listener closed by it within header_timeout ({ht:g} s) + 2 s",
                        "yes" if slow_ok else "no", "yes", slow_ok))

    # --- the process --------------------------------------------------------------------------
    log_text = open(os.path.join(work, "citadel.log"), errors="replace").read()
    panics = len(re.findall(r"panicked", log_text))
    alive = meta["citadel_alive"]
    targets.append(("citadel-authz alive at the end, no panic in its log", "yes" if alive and not panics else
                    f"alive={alive}, panics={panics}", "yes", alive and not panics))

    # --- markdown ---------------------------------------------------------------------------------
    L = []
    L.append(f"# citadel-authz soak test — {meta['date']}, {meta['mode']} run")
    L.append("")
    L.append(f"Command: `{meta['command']}`. Built from: {meta['commit']}. Machine: {meta['machine']}.")
    L.append(f"Duration {dur} s (warm-up {warm} s: all tokens, users and opaque tokens seen once). Load: "
             f"{meta['rate_note']}; the soak client is open loop ({summary.get('conns')} keep-alive HTTP/1.1 "
             f"connections into Envoy, latency from the scheduled send time). Envoy (1 worker) → citadel-authz "
             f"over gRPC ext_authz; Envoy, citadel-authz, PostgreSQL and the IdP on CPU 1, clients on CPU 0.")
    L.append(f"citadel-authz config: jwks refresh_min {meta['refresh_min_s']:g} s, max_stale {meta['max_stale_s']:g} s, "
             f"JWKS max-age {meta['max_age_s']} s; membership (PostgreSQL) cache_ttl {meta['membership_ttl_s']:g} s, "
             f"max_stale {meta['membership_stale_s']:g} s; introspection cache_ttl 1 h, timeout 250 ms; Envoy ext_authz timeout 1 s.")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | value | goal | verdict |")
    L.append("|---|---|---|---|")
    for name, v, goal, ok in targets:
        verdict = "info" if ok is None else ("**pass**" if ok else "**FAIL**")
        L.append(f"| {name} | {v if isinstance(v, str) else fmt(v)} | {goal} | {verdict} |")
    L.append("")
    L.append("## Load")
    L.append("")
    sent = summary.get("sent", 0)
    L.append(f"Requests scheduled {sent + summary.get('dropped', 0):,}, sent {sent:,} "
             f"({sent / dur:,.0f}/s on average), dropped by the client because it fell behind "
             f"{summary.get('dropped', 0):,}, answered {total:,}; reconnects {summary.get('reconnects', 0)}; "
             f"uvloop {'yes' if summary.get('uvloop') else 'no'}. By-design 503s (a new user while the "
             f"membership store is down, a new opaque token while introspection hangs: no cached answer "
             f"exists, SPEC §8/§9): {by_design_total:,}.")
    L.append("")
    L.append("| class | request | expected | answered | as expected | by-design 503 | unexpected | p50 ms | p99 ms |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    desc = {c[0]: c[2] for c in CLASSES}
    desc.update(dict(NEW_CLASSES))
    hist = summary.get("lat_hist", {})
    for cls, pc in per_class.items():
        h = hist.get(cls, {})
        L.append(f"| {cls} | {desc.get(cls, '')} | {EXPECT.get(cls)} | {pc['n']:,} | {pc['expected']:,} | "
                 f"{pc['by_design']:,} | {pc['unexpected']:,} | {fmt(percentile_from_hist(h, 0.5), 2)} | "
                 f"{fmt(percentile_from_hist(h, 0.99), 2)} |")
    L.append("")
    L.append("Statuses over all classes: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(status_totals.items())) + ".")
    if unexpected_rows:
        L.append("")
        L.append("Unexpected answers by 10-s window (source c = citadel-authz's JSON body, e = Envoy's own, "
                 "x = no answer), with the faults active then:")
        L.append("")
        L.append("| window (s) | class | status | source | count | faults active | events within 10 s before or during |")
        L.append("|---|---|---|---|---|---|---|")
        for (w, cls, status, src), n in sorted(unexpected_rows.items())[:40]:
            act = ", ".join(active_at(windows, t0 + w + 5, end_wall)) or "none"
            near = ", ".join(f"{f['event']}{' (valid)' if f.get('valid') is True else ' (invalid)' if f.get('valid') is False else ''} at {f['t']:.0f}"
                             for f in faults if w - 10 <= f["t"] < w + 10 and f["event"] not in ("policy_reload", "schedule_done")) or "none"
            L.append(f"| {w}–{w + 10} | {cls} | {status} | {src} | {n:,} | {act} | {near} |")
        shown = [s for s in summary.get("samples", []) if not (
            s["status"] == 503 and s["class"] in BY_DESIGN
            and in_window(windows.get(BY_DESIGN[s["class"]][0], []), s["t"], BY_DESIGN[s["class"]][1],
                          BY_DESIGN[s["class"]][2], end_wall))]
        if shown:
            L.append("")
            L.append("First unexpected answers (body excerpts):")
            L.append("")
            for s in shown[:8]:
                L.append(f"- t={s['t'] - t0:.1f}s {s['class']} {s['status']}: `{s['body'][:160]}`")
    # How long after each fault ended the by-design 503s went on (new users / new opaque tokens).
    rec_rows = []
    for cls, (w, _, _) in BY_DESIGN.items():
        for ws, we in windows.get(w, []):
            if we is None:
                continue
            last503 = None
            for r in secs:
                t_wall = t0 + r["sec"]
                if ws <= t_wall <= we + 60 and r["counts"].get(f"{cls} 503 c"):
                    last503 = r["sec"] + 1
            rec_rows.append((w, round(ws - t0), round(we - t0), cls,
                             None if last503 is None else max(0, round(t0 + last503 - we))))
    if rec_rows:
        L.append("")
        L.append("| fault | from (s) | to (s) | by-design 503s for | went on after the fault ended (s) |")
        L.append("|---|---|---|---|---|")
        for w, a_, b_, cls, after in rec_rows:
            L.append(f"| {w} | {a_} | {b_} | {cls} | {'none' if after is None else after} |")
    worst_p99 = max(((r["p99_ms"] or 0), r["sec"]) for r in secs) if secs else (0, 0)
    L.append("")
    L.append(f"Worst 1-s p99 latency: {worst_p99[0]:.1f} ms at t={worst_p99[1]} s "
             f"(faults active: {', '.join(active_at(windows, t0 + worst_p99[1], end_wall)) or 'none'}).")
    L.append("")
    L.append("## citadel-authz process (sampled every 10 s)")
    L.append("")
    if res:
        L.append(f"| | first | after warm-up | max | last under load | {meta.get('cooldown', 0)} s idle after the load | slope after warm-up, slow-client windows left out (per 10 min) |")
        L.append("|---|---|---|---|---|---|---|")
        for key, label in (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("threads", "threads"),
                           ("token_cache_entries", "token cache entries")):
            if key in res:
                r = res[key]
                L.append(f"| {label} | {fmt(r['first'])} | {fmt(r['after_warmup'])} | {fmt(r['max'])} | "
                         f"{fmt(r['last'])} | {fmt(r['idle'])} | {fmt(r['slope'], 2)} |")
    cpu = [s_["citadel_cpu_pct"] for s_ in samples if s_.get("citadel_cpu_pct") is not None]
    la = [s_["loadavg1"] for s_ in samples if s_.get("loadavg1") is not None]
    def avgmax(key):
        v = [s_[key] for s_ in samples if s_.get(key) is not None]
        return f"{sum(v) / len(v):.0f} % (max {max(v):.0f} %)" if v else "n/a"
    if cpu and la:
        L.append("")
        L.append(f"CPU 1 (servers) on average: Envoy {avgmax('envoy_cpu_pct')}, the soak's IdP {avgmax('idp_cpu_pct')}, citadel-authz "
                 f"{avgmax('citadel_cpu_pct')}; PostgreSQL not sampled.")
        L.append(f"citadel-authz CPU: {sum(cpu) / len(cpu):.0f} % of one core on average (max {max(cpu):.0f} %); "
                 f"soak client CPU {100 * summary.get('client_cpu_s', 0) / dur:.0f} % of one core. Machine load "
                 f"average (1 min) {sum(la) / len(la):.1f} on average, {max(la):.1f} at most, for 2 CPUs: above about 3, "
                 f"other work on the machine competed with the soak and latencies say more about it than about citadel-authz.")
    sock = os.path.join(work, "sockets-end.txt")
    if os.path.exists(sock):
        kinds = {}
        for line in open(sock):
            f = line.split()
            if len(f) >= 5:
                local, peer = f[3].rsplit(":", 1)[1], f[4].rsplit(":", 1)[1]
                k = f"{f[0]} local :{local}" if f[0] == "LISTEN" else f"{f[0]} :{local} ↔ :{peer}"
                k = re.sub(r":\d{5}(?= ↔)|(?<=↔ ):\d{5}$", lambda m: m.group(0) if m.group(0).lstrip(":").startswith("29") else ":ephemeral", k)
                kinds[k] = kinds.get(k, 0) + 1
        if kinds:
            L.append("")
            L.append("TCP sockets citadel-authz held at the end (after the idle period): " + "; ".join(
                f"{k} × {v}" for k, v in sorted(kinds.items())) + ".")
    L.append("")
    L.append("## JWKS")
    L.append("")
    by_status = {}
    for _, st in idp["jwks_fetches"]:
        by_status[str(st)] = by_status.get(str(st), 0) + 1
    L.append(f"JWKS requests that reached the IdP: {len(fetches)} ({', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))}; "
             f"refused connections never arrive). Jku canary hits: {idp.get('jku_hits', 0)}.")
    if storm_rows:
        L.append("")
        L.append("| unknown-kid storm at (s) | lasted (s) | JWKS fetches during it | most within one refresh_min | shortest gap between two (s) |")
        L.append("|---|---|---|---|---|")
        for r in storm_rows:
            L.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {fmt(r[4], 3)} |")
    L.append("")
    L.append("## Hostile requests and slow clients")
    L.append("")
    L.append(f"{hostile_sent:,} hostile requests (bursts and storms); answers by kind (status source):")
    L.append("")
    L.append("| kind | expected | answers |")
    L.append("|---|---|---|")
    for kind, row in sorted(hostile_rows.items()):
        L.append(f"| {kind} | {', '.join(map(str, expected_of.get(kind, [])))} | "
                 f"{', '.join(f'{k}: {v:,}' for k, v in sorted(row.items()))} |")
    if slow_rows:
        L.append("")
        L.append("| slow clients: target/mode | opened | closed by the server | median / max s to close | open at the end |")
        L.append("|---|---|---|---|---|")
        for k, vs in sorted(slow_rows.items()):
            for v in vs:
                if "closed_by_server" in v:
                    L.append(f"| {k} | {v['opened']} | {v['closed_by_server']} | {fmt(v['median_close_s'])} / "
                             f"{fmt(v['max_close_s'])} | {v['open_at_end']} |")
                else:
                    L.append(f"| {k} (pipelined, never read) | {v['opened']} | — | — | — |")
    L.append("")
    L.append("## Faults injected")
    L.append("")
    L.append("| t (s) | event | details |")
    L.append("|---|---|---|")
    for f in faults:
        details = {k: v for k, v in f.items() if k not in ("t", "wall", "event", "stderr") and v not in ("", None)}
        if f.get("stderr"):
            details["stderr"] = f["stderr"][-120:].replace("\n", " ")
        L.append(f"| {f['t']:.0f} | {f['event']} | {json.dumps(details)[1:-1].replace('|', '/')} |")
    m = None
    if os.path.exists(os.path.join(work, "metrics-end.txt")):
        m = open(os.path.join(work, "metrics-end.txt")).read()
    if m:
        L.append("")
        L.append("## citadel-authz counters at the end")
        L.append("")
        outcomes = {}
        for line in m.splitlines():
            mm = re.match(r'^citadel_authz_decisions_total\{([^}]*)\}\s+(\S+)', line)
            if mm:
                o = dict(re.findall(r'(\w+)="([^"]*)"', mm.group(1))).get("outcome", "?")
                outcomes[o] = outcomes.get(o, 0) + float(mm.group(2))
        L.append("Decisions: " + ", ".join(f"{k} {int(v):,}" for k, v in sorted(outcomes.items())) + ".")
        L.append(f"Membership lookups: " + ", ".join(
            f"{o} {int(metric(m, 'citadel_authz_membership_lookups_total', outcome=o) or 0):,}"
            for o in ("hit", "miss", "stale", "error")) + ".")
        L.append(f"JWKS fetches: ok {int(metric(m, 'citadel_authz_jwks_fetches_total', outcome='ok') or 0)}, "
                 f"error {int(metric(m, 'citadel_authz_jwks_fetches_total', outcome='error') or 0)}. "
                 f"Config reloads: ok {int(metric(m, 'citadel_authz_config_reloads_total', outcome='ok') or 0)}, "
                 f"error {int(metric(m, 'citadel_authz_config_reloads_total', outcome='error') or 0)}. "
                 f"Introspection calls: " + ", ".join(
                     f"{o} {int(metric(m, 'citadel_authz_introspection_calls_total', outcome=o) or 0):,}"
                     for o in ("active", "inactive", "error")) + ".")
    L.append("")
    L.append("Raw data: bench/results/soak-latest-load.jsonl (per second), soak-latest-samples.csv, "
             "soak-latest-faults.jsonl, soak-latest-idp.json.")
    judged = [t for t in targets if t[3] is not None]
    failed = [t for t in judged if not t[3]]
    L.append("")
    L.append(f"**Result: {'PASS' if not failed else 'FAIL'}** ({len(judged) - len(failed)}/{len(judged)} targets met).")
    text = "\n".join(L) + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
