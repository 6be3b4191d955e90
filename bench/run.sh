#!/usr/bin/env bash
# citadel-authz benchmark suite, one command:
#
#   bench/run.sh            full run (~25 min): 3 repetitions × 10 s per scenario, 10k/100k tokens
#   bench/run.sh --quick    smoke test (a few minutes): 1 repetition × 2 s, 1k/20k tokens
#
# Loopback only. The load generator (wrk, examples/loadgen) is pinned to CPU 0, every server
# (Envoy, citadel-authz, noop_authz, the JWKS file server, the suite's PostgreSQL cluster and its
# introspection server) to CPU 1; the cleanup trap stops all of them, also on failure or a
# signal. Prints a markdown table of medians, each figure with its baseline from the same run,
# and writes it to bench/results/latest.md (raw results: bench/results/raw-latest.jsonl). Needs:
# cargo, python3, curl, taskset, PostgreSQL (/usr/lib/postgresql/*/bin or CITADEL_TEST_PG_BIN);
# installs wrk and h2load (apt) and Envoy (scripts/install-test-deps.sh) if missing.
set -euo pipefail

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$root/bench"
work="$bench/work"
results="$bench/results"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release"
envoy="$root/.tools/bin/envoy"

if [ "$mode" = quick ]; then
  DUR=2; WARM=1; REPS=1; NTOK=1000; BIG=20000
else
  DUR=10; WARM=3; REPS=3; NTOK=10000; BIG=100000
fi
WRK_CONNS=32          # wrk connections into Envoy
LG_CONC=64            # loadgen closed-loop streams
LG_CONNS=2            # ... over this many HTTP/2 connections
export ISSUER=https://iam.bench.local AUDIENCE=https://api.bench.local
export ENVOY_PORT=28000 ENVOY_ADMIN_PORT=28001 JWKS_PORT=28080 GRPC_PORT=28191 HTTP_PORT=28192 NOOP_PORT=28393
export NOOP_ID_PORT=28394
export INTRO_PORT=28094 PG_PORT=28432 PG_POOL=4
export STORM=10000    # #10: new users at once in the PostgreSQL storm (always 10k, also --quick)
BURST=1000 BURST_TOKENS=10   # #11: concurrent checks of this many new opaque tokens
export JWT_CACHE_SIZE=$((NTOK * 2)) NTOK
ALGS=(ES256 RS256 EdDSA)
URL_PATH=/api/orders/42

# BENCH_SKIP="micro envoy answer server pg intro" skips those stages (for working on the suite itself).
want() { [[ " ${BENCH_SKIP:-} " != *" $1 "* ]]; }
say() { printf '\n[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Not `grep -q`: it exits at the first match, Envoy then dies of SIGPIPE and, under pipefail, the
# check failed and reinstalled Envoy on every run.
if ! "$envoy" --version 2>/dev/null | grep '/1\.40\.' >/dev/null; then
  say "installing Envoy (scripts/install-test-deps.sh)"
  "$root/scripts/install-test-deps.sh"
fi
for t in python3 curl taskset; do command -v $t >/dev/null || { echo "bench: $t is required" >&2; exit 1; }; done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs (load generator and servers are pinned apart)" >&2; exit 1; }

say "building (release): citadel-authz, examples"
(cd "$root" && cargo build --release --examples --bins -q)

rm -rf "$work"; mkdir -p "$work/fixtures" "$work/bin/examples" "$results"
# Run private copies: another `cargo build` in this tree during the run cannot swap the binaries.
cp "$bin/citadel-authz" "$work/bin/"
cp "$bin/examples/loadgen" "$bin/examples/noop_authz" "$bin/examples/mint_tokens" "$work/bin/examples/"
bin="$work/bin"
built_at=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')
raw="$results/raw-latest.jsonl"; : > "$raw"

# --- processes ---------------------------------------------------------------------------------
pids=()
pg_data=""            # set while the suite's PostgreSQL cluster may be running
sampler_pid=""        # the pg_stat_activity sampler (psql), while it runs
cleanup() {
  [ -z "$sampler_pid" ] || kill "$sampler_pid" 2>/dev/null || true
  [ -z "$pg_data" ] || pg_stop
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
# A signal must end the script through `exit`, so that the EXIT trap stops everything.
trap 'exit 130' INT TERM

# start NAME CMD... : run CMD in the background on CPU 1, logging to work/NAME.log; sets $started.
start() {
  local name=$1; shift
  taskset -c 1 "$@" >"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
}

stop() {
  local p=$1
  kill "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
}

# wait_http URL [SECONDS]: poll until URL answers 200 (bounded).
wait_http() {
  local url=$1 deadline=$((SECONDS + ${2:-30}))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || { echo "bench: timed out waiting for $url" >&2; return 1; }
    sleep 0.1
  done
}

# expect_status CODE TOKEN_FILE: one request through Envoy must get CODE (config sanity).
expect_status() {
  local want=$1 file=$2 got auth=()
  [ "$file" = - ] || auth=(-H "Authorization: Bearer $(head -n 1 "$file")")
  got=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$ENVOY_PORT$URL_PATH")
  [ "$got" = "$want" ] || { echo "bench: sanity check failed: got $got, want $want ($file)" >&2; exit 1; }
}

cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
# steal_ticks: CPU 1's steal time so far (/proc/stat, field 8 of the cpu1 line): time the
# hypervisor gave CPU 1 to another guest. Recorded per repetition, so that a figure measured while
# a neighbour took the host's CPU can be told from a change in the code.
steal_ticks() { awk '$1 == "cpu1" { print $9 }' /proc/stat; }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

tokens() { echo "$work/fixtures/tokens-$1-$2.txt"; }

# port_free PORT: nothing listens on 127.0.0.1:PORT (the suite's ports are fixed).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- PostgreSQL (#10): a private cluster in bench/work/pg, as tests/it/pg.rs starts one ---------
# initdb + pg_ctl as the `postgres` user when run as root (PostgreSQL refuses root); TCP on
# 127.0.0.1:$PG_PORT with scram passwords, the unix socket in the cluster dir; no fsync.
pg_bin=${CITADEL_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_dir="$work/pg"
pg_start() {
  [ -x "$pg_bin/initdb" ] || { echo "bench: PostgreSQL not found (apt-get install -y postgresql)" >&2; exit 1; }
  port_free "$PG_PORT" || { echo "bench: port $PG_PORT is in use" >&2; exit 1; }
  mkdir -p "$pg_dir/sock"
  [ "$(id -u)" != 0 ] || chown -R postgres: "$pg_dir"
  as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --no-sync -E UTF8 --locale=C > "$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; echo "bench: initdb failed" >&2; exit 1; }
  printf "\nport = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 100\nshared_buffers = 64MB\nlog_connections = on\n" \
    "$PG_PORT" "$pg_dir/sock" | as_pg tee -a "$pg_dir/data/postgresql.conf" >/dev/null
  pg_data="$pg_dir/data"
  # The postmaster and its backends inherit CPU 1 (servers' CPU).
  local run=(); [ "$(id -u)" != 0 ] || run=(runuser -u postgres --)
  taskset -c 1 "${run[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_dir/server.log" -w -t 60 start >/dev/null \
    || { cat "$pg_dir/server.log" >&2; echo "bench: PostgreSQL did not start" >&2; exit 1; }
}
pg_stop() {
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  pg_data=""
}
psql_su() { as_pg "$pg_bin/psql" -h "$pg_dir/sock" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAtX "$@"; }
# pg_setup USERS: role `citadel` with a random password owning database `policy`, the README's
# example schema (table, index, NOTIFY trigger), and rows for user-0..user-(USERS-1) as in
# members.yaml (acme: member, *: support).
pg_setup() {
  local users=$1 pw
  pw=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  psql_su -d postgres -c "CREATE ROLE citadel LOGIN PASSWORD '$pw'"
  psql_su -d postgres -c "CREATE DATABASE policy OWNER citadel"
  psql_su -d policy <<SQL
CREATE TABLE memberships (
  issuer  text NOT NULL,
  subject text NOT NULL,
  tenant  text NOT NULL,
  role    text,
  PRIMARY KEY (issuer, subject, tenant, role)
);
CREATE INDEX ON memberships (issuer, subject);
CREATE FUNCTION citadel_membership_notify() RETURNS trigger AS \$\$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM pg_notify('citadel_membership', OLD.issuer || ' ' || OLD.subject);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM pg_notify('citadel_membership', NEW.issuer || ' ' || NEW.subject);
  END IF;
  RETURN NULL;
END \$\$ LANGUAGE plpgsql;
INSERT INTO memberships SELECT 'bench', 'user-' || i, 'acme', 'member' FROM generate_series(0, $users - 1) i;
INSERT INTO memberships SELECT 'bench', 'user-' || i, '*', 'support' FROM generate_series(0, $users - 1) i;
CREATE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON memberships
  FOR EACH ROW EXECUTE FUNCTION citadel_membership_notify();
GRANT SELECT ON memberships TO citadel;
ANALYZE memberships;
SQL
  export CITADEL_AUTHZ_DATABASE_URL="postgres://citadel:$pw@127.0.0.1:$PG_PORT/policy"
}
# sampler_start FILE: one psql session (CPU 0) samples every 20 ms how many connections
# citadel-authz's query pool holds (application_name 'citadel-authz'; the LISTEN connection is
# 'citadel-authz-listen') and how many of them are running a query.
sampler_start() {
  printf "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity WHERE application_name = 'citadel-authz'\n\\watch 0.02\n" \
    | taskset -c 0 "$pg_bin/psql" -h "$pg_dir/sock" -p "$PG_PORT" -U postgres -d policy -qAtX > "$1" 2>&1 &
  sampler_pid=$!
}
# pg_opened: connections citadel-authz's query pool has opened so far (log_connections lines with
# its application_name), so that one opened and closed between two samples is counted too.
pg_opened() { grep -cE 'connection authorized: .*application_name=citadel-authz( |$)' "$pg_dir/server.log" || true; }
sampler_stop() { kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""; }

# --- fixtures and configs ----------------------------------------------------------------------
say "minting keys and tokens ($NTOK per algorithm, $BIG ES256 for the memory test)"
"$bin/examples/mint_tokens" "$work/fixtures" "$ISSUER" "$AUDIENCE" "$NTOK" "$BIG"
python3 "$bench/tool.py" gen "$work"
for cfg in "$work"/envoy-*.yaml; do
  "$envoy" --mode validate -c "$cfg" -l error >/dev/null || { echo "bench: invalid $cfg" >&2; exit 1; }
done

# --- micro-benchmarks (criterion) -------------------------------------------------------------
if want micro; then
say "criterion micro-benchmarks (benches/core.rs)"
bench_exe=$(cd "$root" && cargo bench --bench core --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "core" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
[ -n "$bench_exe" ] || { echo "bench: cannot build benches/core.rs" >&2; exit 1; }
quick_env=(); [ "$mode" = quick ] && quick_env=(BENCH_QUICK=1)
env "${quick_env[@]}" CRITERION_HOME="$work/criterion" taskset -c 1 "$bench_exe" --bench --noplot \
  2>&1 | grep -E '^(verify|policy)/|time:' >&2 || true
fi

# --- servers shared by the scenarios ------------------------------------------------------------
start jwks python3 -m http.server --bind 127.0.0.1 --directory "$work/fixtures" "$JWKS_PORT"
wait_http "http://127.0.0.1:$JWKS_PORT/jwks.json"
start noop "$bin/examples/noop_authz" "127.0.0.1:$NOOP_PORT"; noop_pid=$started
# NOOP_ID_ARGS="--spin-us N": noop --identity also burns N µs of CPU per check (for experiments).
# shellcheck disable=SC2086
start noop-id "$bin/examples/noop_authz" "127.0.0.1:$NOOP_ID_PORT" --identity ${NOOP_ID_ARGS:-}; noop_id_pid=$started
start_citadel() { # NAME: citadel-authz with work/citadel-NAME.yaml (the previous one stopped)
  [ -z "${citadel_pid:-}" ] || stop "$citadel_pid"
  start "citadel-$1" env RUST_LOG=warn "$bin/citadel-authz" serve --config "$work/citadel-$1.yaml"
  citadel_pid=$started
  wait_http "http://127.0.0.1:$HTTP_PORT/readyz"
}
start_citadel 10

# --- Envoy scenarios (wrk on CPU 0; Envoy and the authz server on CPU 1) -----------------------
# wrk_run SCENARIO TOKEN_FILE ENVOY_PID AUTHZ_PID [REPS [REP_LABEL]]: REP_LABEL numbers a single
# repetition. Envoy's and the authorization server's CPU time are recorded per repetition: they
# share CPU 1, so a difference in throughput is split into what each process spent per request.
wrk_run() {
  local scenario=$1 file=$2 envoy_pid=$3 authz_pid=$4 rep s0 e0 a0
  taskset -c 0 wrk -t1 -c$WRK_CONNS -d${WARM}s -s "$bench/rotate.lua" \
    "http://127.0.0.1:$ENVOY_PORT$URL_PATH" -- "$file" >/dev/null
  for rep in $(seq "${5:-$REPS}"); do
    s0=$(steal_ticks); e0=$(cpu_ticks "$envoy_pid"); a0=0
    [ -z "$authz_pid" ] || a0=$(cpu_ticks "$authz_pid")
    taskset -c 0 wrk -t1 -c$WRK_CONNS -d${DUR}s --latency -s "$bench/rotate.lua" \
      "http://127.0.0.1:$ENVOY_PORT$URL_PATH" -- "$file" > "$work/wrk.out"
    python3 "$bench/tool.py" wrk "$work/wrk.out" "$scenario" "${6:-$rep}" "$(($(steal_ticks) - s0))" "$CLK_TCK" \
      "$(($(cpu_ticks "$envoy_pid") - e0))" \
      "$([ -z "$authz_pid" ] || echo $(($(cpu_ticks "$authz_pid") - a0)))" | tee -a "$raw" >&2
  done
}

envoy_scenario() { # SCENARIO CONFIG TOKEN_FILE [REPS [REP_LABEL]]
  local scenario=$1 cfg=$2 file=$3
  say "envoy $scenario"
  start "envoy-$scenario" "$envoy" -c "$work/$cfg" --concurrency 1 --disable-hot-restart -l error
  local envoy_pid=$started authz_pid=""
  case $cfg in
    envoy-c.yaml) authz_pid=$noop_pid ;;
    envoy-c-id.yaml) authz_pid=$noop_id_pid ;;
    envoy-d.yaml) authz_pid=$citadel_pid ;;
  esac
  wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"
  expect_status 200 "$file"
  wrk_run "$scenario" "$file" "$envoy_pid" "$authz_pid" "${4:-$REPS}" "${5:-}"
  stop "$envoy_pid"
}

if want envoy; then
  envoy_scenario env_a envoy-a.yaml -
  envoy_scenario env_c envoy-c.yaml -
  for alg in "${ALGS[@]}"; do
    envoy_scenario "env_b_off_$alg" envoy-b-off.yaml "$(tokens "$alg" "$NTOK")"
    envoy_scenario "env_b_on_$alg" envoy-b-on.yaml "$(tokens "$alg" "$NTOK")"
    envoy_scenario "env_d_$alg" envoy-d.yaml "$(tokens "$alg" 1)"
    envoy_scenario "env_e_$alg" envoy-d.yaml "$(tokens "$alg" "$NTOK")"
  done
fi

# --- (c'): what applying citadel-authz's answer costs Envoy -----------------------------------
# Envoy → noop, Envoy → noop_authz --identity (the answer citadel-authz gives, built once: three
# identity headers, five dynamic-metadata fields), Envoy → citadel-authz (ES256, one token), taking
# turns per repetition. (c) → (c') is Envoy's own extra work for the answer; (c') → (d) is what
# citadel-authz's decision costs on the shared CPU.
if want answer; then
  for rep in $(seq "$REPS"); do
    envoy_scenario env_c_i envoy-c.yaml - 1 "$rep"
    envoy_scenario env_cid_i envoy-c-id.yaml - 1 "$rep"
    envoy_scenario env_d_i envoy-d.yaml "$(tokens ES256 1)" 1 "$rep"
  done
fi

# --- gRPC server alone: loadgen on CPU 0 → noop_authz / citadel-authz on CPU 1 -----------------
lg_run() { # SCENARIO PID PORT LOADGEN_ARGS...
  local scenario=$1 pid=$2 port=$3 rep; shift 3
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$port" --duration "$WARM" "$@" >/dev/null
  for rep in $(seq "$REPS"); do
    lg_rep "$scenario" "$rep" "$pid" "$port" "$@"
  done
}

lg_rep() { # SCENARIO REP PID PORT LOADGEN_ARGS...: one measured repetition
  local scenario=$1 rep=$2 pid=$3 port=$4 t0 t1 s0; shift 4
  t0=$(cpu_ticks "$pid"); s0=$(steal_ticks)
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$port" --duration "$DUR" "$@" > "$work/lg.out"
  t1=$(cpu_ticks "$pid")
  python3 "$bench/tool.py" loadgen "$work/lg.out" "$scenario" "$rep" "$t0" "$t1" "$CLK_TCK" \
    "$(($(steal_ticks) - s0))" | tee -a "$raw" >&2
}

# lg_alternate A_SCENARIO A_PID A_PORT B_SCENARIO B_PID B_PORT LOADGEN_ARGS...: A and B with the
# same load, their repetitions interleaved (A1 B1 A2 B2 …). A latency figure is compared with its
# baseline: measured back to back, a minute of a noisy neighbour lands on both or on one
# repetition of each, not on all of one scenario (the 2026-12-03 run's open-loop p99 was 9 ms for
# citadel-authz in one contiguous 40 s window, with noop's 30 s before it at 0.5–0.9 ms).
lg_alternate() {
  local a=$1 apid=$2 aport=$3 b=$4 bpid=$5 bport=$6 rep; shift 6
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$aport" --duration "$WARM" "$@" >/dev/null
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$bport" --duration "$WARM" "$@" >/dev/null
  for rep in $(seq "$REPS"); do
    lg_rep "$a" "$rep" "$apid" "$aport" "$@"
    lg_rep "$b" "$rep" "$bpid" "$bport" "$@"
  done
}

closed=(--concurrency "$LG_CONC" --connections "$LG_CONNS")
if want server; then
say "gRPC server alone: closed loop"
lg_run srv_noop_closed "$noop_pid" "$NOOP_PORT" "${closed[@]}"
for alg in "${ALGS[@]}"; do
  lg_run "srv_citadel_1_${alg}_closed" "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens "$alg" 1)"
  lg_run "srv_citadel_N_${alg}_closed" "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens "$alg" "$NTOK")"
done
say "gRPC server alone: open loop (1,000 and 5,000 checks/s)"
lg_alternate srv_noop_open1k "$noop_pid" "$NOOP_PORT" srv_citadel_open1k "$citadel_pid" "$GRPC_PORT" \
  --rate 1000 --tokens "$(tokens ES256 1)"
lg_alternate srv_noop_open5k "$noop_pid" "$NOOP_PORT" srv_citadel_open5k "$citadel_pid" "$GRPC_PORT" \
  --rate 5000 --tokens "$(tokens ES256 1)"

say "membership store (file) on: the same one-token closed loop"
stop "$citadel_pid"
start_citadel members
lg_run srv_citadel_members_file_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 1)"
stop "$citadel_pid"
fi

# metric NAME [k=v ...]: the sum of a citadel-authz metric now (its /metrics on HTTP_PORT).
metric() {
  curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" > "$work/metrics.txt"
  python3 "$bench/tool.py" metric "$work/metrics.txt" "$@"
}
# warm TOKEN_FILE COUNT: every token checked once (fills the verified-token cache), unrecorded.
warm() {
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$GRPC_PORT" "${closed[@]}" --duration 600 \
    --count "$2" --tokens "$1" >/dev/null
}

# --- #10: membership lookups in PostgreSQL ------------------------------------------------------
if want pg; then
  say "PostgreSQL: a private cluster in bench/work/pg on 127.0.0.1:$PG_PORT, $((NTOK > STORM ? NTOK : STORM)) users"
  pg_start
  pg_setup $((NTOK > STORM ? NTOK : STORM))

  say "membership file vs PostgreSQL uncached (capacity 0), $NTOK rotating tokens, token cache warm"
  start_citadel members
  warm "$(tokens ES256 "$NTOK")" "$NTOK"
  lg_run srv_citadel_members_file_N_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 "$NTOK")"
  stop "$citadel_pid"
  start_citadel pg-uncached
  warm "$(tokens ES256 "$NTOK")" "$NTOK"
  sampler_start "$work/pg-samples-uncached.txt"
  lg_run srv_citadel_members_pg_uncached_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 "$NTOK")"
  sampler_stop
  stop "$citadel_pid"

  say "PostgreSQL storm: $STORM new users at once (membership cache cold, token cache warm)"
  head -n "$STORM" "$(tokens ES256 "$BIG")" > "$work/fixtures/tokens-storm.txt"
  [ "$(wc -l < "$work/fixtures/tokens-storm.txt")" -eq "$STORM" ] || { echo "bench: need $STORM storm tokens" >&2; exit 1; }
  opened0=$(pg_opened)
  start_citadel pg-storm
  warm "$work/fixtures/tokens-storm.txt" "$STORM"
  # The warm-up also filled the membership cache: an empty NOTIFY drops every entry (README), so
  # the storm's checks are all hits of the token cache and misses of the membership cache.
  psql_su -d policy -c "NOTIFY citadel_membership"
  sleep 1
  lookups0=$(metric citadel_authz_membership_lookups_total source=postgres outcome=miss)
  sampler_start "$work/pg-samples-storm.txt"
  sleep 0.2
  # 10k streams over 80 connections (the server allows 128 streams per connection): all at once.
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$GRPC_PORT" --concurrency "$STORM" \
    --connections 80 --count "$STORM" --duration 600 --timeout 30 --tokens "$work/fixtures/tokens-storm.txt" > "$work/lg.out"
  sleep 0.2
  sampler_stop
  lookups1=$(metric citadel_authz_membership_lookups_total source=postgres outcome=miss)
  opened1=$(pg_opened)
  python3 "$bench/tool.py" storm "$work/lg.out" "$work/pg-samples-storm.txt" "$PG_POOL" \
    "$((lookups1 - lookups0))" "$STORM" "$((opened1 - opened0))" | tee -a "$raw" >&2
  stop "$citadel_pid"
  pg_stop

  # The same storm against the membership file: what 10,000 streams at once cost without any
  # store round trip (loadgen, HTTP/2, the server's scheduling), the storm's baseline.
  say "storm baseline: the same $STORM checks at once with the membership file"
  start_citadel members
  warm "$work/fixtures/tokens-storm.txt" "$STORM"
  t0=$(cpu_ticks "$citadel_pid")
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$GRPC_PORT" --concurrency "$STORM" \
    --connections 80 --count "$STORM" --duration 600 --timeout 30 --tokens "$work/fixtures/tokens-storm.txt" > "$work/lg.out"
  t1=$(cpu_ticks "$citadel_pid")
  python3 "$bench/tool.py" loadgen "$work/lg.out" storm_file 1 "$t0" "$t1" "$CLK_TCK" | tee -a "$raw" >&2
  stop "$citadel_pid"
fi

# --- #11: opaque tokens, introspected at the suite's own RFC 7662 server ------------------------
if want intro; then
  say "introspection: cached opaque token vs cached JWT, and a burst of $BURST checks of $BURST_TOKENS new tokens"
  port_free "$INTRO_PORT" || { echo "bench: port $INTRO_PORT is in use" >&2; exit 1; }
  export CITADEL_BENCH_INTROSPECTION_SECRET
  CITADEL_BENCH_INTROSPECTION_SECRET=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  start intro python3 "$bench/introspect_server.py" "$INTRO_PORT" "$ISSUER" "$AUDIENCE"; intro_pid=$started
  wait_http "http://127.0.0.1:$INTRO_PORT/stats"
  start_citadel intro
  lg_run srv_intro_jwt_1_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 1)"
  lg_run srv_intro_opaque_1_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$work/fixtures/tokens-opaque-1.txt"
  python3 "$bench/tool.py" opaque "$BURST_TOKENS" "$work/fixtures/tokens-burst.txt" burst
  calls0=$(curl -sf "http://127.0.0.1:$INTRO_PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])')
  mcalls0=$(metric citadel_authz_introspection_calls_total)
  # 1,000 streams over 8 connections (≤ 128 each): every check in flight at once, 100 per token.
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$GRPC_PORT" --concurrency "$BURST" \
    --connections 8 --count "$BURST" --duration 600 --timeout 30 --tokens "$work/fixtures/tokens-burst.txt" > "$work/lg.out"
  calls1=$(curl -sf "http://127.0.0.1:$INTRO_PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])')
  mcalls1=$(metric citadel_authz_introspection_calls_total)
  python3 "$bench/tool.py" burst "$work/lg.out" "$((calls1 - calls0))" "$((mcalls1 - mcalls0))" "$BURST_TOKENS" \
    | tee -a "$raw" >&2
  stop "$citadel_pid"
  # #13: what a user of both features runs — Envoy → citadel-authz with the membership file and a
  # cached opaque token — against Envoy → noop_authz (env_c) in the same run.
  if want envoy; then
    # Interleaved with its own Envoy → noop_authz baseline (env_c_f: c1 f1 c2 f2 …), not compared
    # with env_c of ~15 minutes earlier: a 5 % target needs a baseline measured beside it.
    start_citadel intro-members
    for rep in $(seq "$REPS"); do
      envoy_scenario env_c_f envoy-c.yaml - 1 "$rep"
      envoy_scenario env_f_opaque_members envoy-d.yaml "$work/fixtures/tokens-opaque-1.txt" 1 "$rep"
    done
    stop "$citadel_pid"
  fi
  stop "$intro_pid"
fi

if want server; then
say "policy scaling: citadel-authz with 1,000 rules"
start_citadel 1000
lg_run srv_citadel_1000rules_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 1)"
stop "$citadel_pid"

say "memory: RSS after $BIG distinct valid tokens, each checked once"
start_citadel 10
rss0=$(rss_mb "$citadel_pid")
t0=$(cpu_ticks "$citadel_pid")
taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$GRPC_PORT" "${closed[@]}" --duration 600 \
  --count "$BIG" --tokens "$(tokens ES256 "$BIG")" > "$work/lg.out"
t1=$(cpu_ticks "$citadel_pid")
sleep 1
rss1=$(rss_mb "$citadel_pid")
python3 "$bench/tool.py" rss "$work/lg.out" "$rss0" "$rss1" "$BIG" | tee -a "$raw" >&2
# The same run is the uncached case: every check is a token never seen before.
python3 "$bench/tool.py" loadgen "$work/lg.out" srv_citadel_uncached 1 "$t0" "$t1" "$CLK_TCK" \
  | tee -a "$raw" >&2
stop "$citadel_pid"
fi

# --- report ------------------------------------------------------------------------------------
say "report"
{
  echo "# citadel-authz benchmarks — $(date -u +%Y-%m-%dT%H:%MZ), $mode run"
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)."
  echo "Built from: $built_at (criterion: the tree when benches/core.rs was built, just after)."
  echo "Load generator on CPU 0, servers on CPU 1; $REPS × ${DUR}s per scenario after ${WARM}s warm-up; $NTOK rotating tokens."
  echo
} > "$work/header.md"
python3 "$bench/tool.py" report "$raw" "$work/criterion" "$work/table.md" "$mode" >/dev/null
cat "$work/header.md" "$work/table.md" > "$results/latest.md"
cat "$results/latest.md"
