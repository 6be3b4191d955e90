#!/usr/bin/env bash
# citadel-authz benchmark suite, one command:
#
#   bench/run.sh            full run (~25 min): 3 repetitions × 10 s per scenario, 10k/100k tokens
#   bench/run.sh --quick    smoke test (a few minutes): 1 repetition × 2 s, 1k/20k tokens
#
# Loopback only. The load generator (wrk, examples/loadgen) is pinned to CPU 0, every server
# (Envoy, citadel-authz, noop_authz, the JWKS file server) to CPU 1. Prints a markdown table of
# medians, each figure with its baseline from the same run, and writes it to
# bench/results/latest.md (raw results: bench/results/raw-latest.jsonl). Needs: cargo, python3,
# curl, taskset; installs wrk and h2load (apt) and Envoy (scripts/install-test-deps.sh) if missing.
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
export JWT_CACHE_SIZE=$((NTOK * 2)) NTOK
ALGS=(ES256 RS256 EdDSA)
URL_PATH=/api/orders/42

# BENCH_SKIP="micro envoy server" skips those stages (for working on the suite itself).
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
if ! "$envoy" --version 2>/dev/null | grep -q '/1\.40\.'; then
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
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

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
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

tokens() { echo "$work/fixtures/tokens-$1-$2.txt"; }

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
start_citadel() {
  start "citadel-$1" env RUST_LOG=warn "$bin/citadel-authz" serve --config "$work/citadel-$1.yaml"
  citadel_pid=$started
  wait_http "http://127.0.0.1:$HTTP_PORT/readyz"
}
start_citadel 10

# --- Envoy scenarios (wrk on CPU 0; Envoy and the authz server on CPU 1) -----------------------
wrk_run() { # SCENARIO TOKEN_FILE
  local scenario=$1 file=$2 rep
  taskset -c 0 wrk -t1 -c$WRK_CONNS -d${WARM}s -s "$bench/rotate.lua" \
    "http://127.0.0.1:$ENVOY_PORT$URL_PATH" -- "$file" >/dev/null
  for rep in $(seq "$REPS"); do
    taskset -c 0 wrk -t1 -c$WRK_CONNS -d${DUR}s --latency -s "$bench/rotate.lua" \
      "http://127.0.0.1:$ENVOY_PORT$URL_PATH" -- "$file" > "$work/wrk.out"
    python3 "$bench/tool.py" wrk "$work/wrk.out" "$scenario" "$rep" | tee -a "$raw" >&2
  done
}

envoy_scenario() { # SCENARIO CONFIG TOKEN_FILE
  local scenario=$1 cfg=$2 file=$3
  say "envoy $scenario"
  start "envoy-$scenario" "$envoy" -c "$work/$cfg" --concurrency 1 --disable-hot-restart -l error
  local envoy_pid=$started
  wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"
  expect_status 200 "$file"
  wrk_run "$scenario" "$file"
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

# --- gRPC server alone: loadgen on CPU 0 → noop_authz / citadel-authz on CPU 1 -----------------
lg_run() { # SCENARIO PID PORT LOADGEN_ARGS...
  local scenario=$1 pid=$2 port=$3 rep t0 t1; shift 3
  taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$port" --duration "$WARM" "$@" >/dev/null
  for rep in $(seq "$REPS"); do
    t0=$(cpu_ticks "$pid")
    taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$port" --duration "$DUR" "$@" > "$work/lg.out"
    t1=$(cpu_ticks "$pid")
    python3 "$bench/tool.py" loadgen "$work/lg.out" "$scenario" "$rep" "$t0" "$t1" "$CLK_TCK" \
      | tee -a "$raw" >&2
  done
}

say "gRPC server alone: closed loop"
closed=(--concurrency "$LG_CONC" --connections "$LG_CONNS")
lg_run srv_noop_closed "$noop_pid" "$NOOP_PORT" "${closed[@]}"
for alg in "${ALGS[@]}"; do
  lg_run "srv_citadel_1_${alg}_closed" "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens "$alg" 1)"
  lg_run "srv_citadel_N_${alg}_closed" "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens "$alg" "$NTOK")"
done
say "gRPC server alone: open loop (1,000 and 5,000 checks/s)"
lg_run srv_noop_open1k "$noop_pid" "$NOOP_PORT" --rate 1000 --tokens "$(tokens ES256 1)"
lg_run srv_citadel_open1k "$citadel_pid" "$GRPC_PORT" --rate 1000 --tokens "$(tokens ES256 1)"
lg_run srv_noop_open5k "$noop_pid" "$NOOP_PORT" --rate 5000 --tokens "$(tokens ES256 1)"
lg_run srv_citadel_open5k "$citadel_pid" "$GRPC_PORT" --rate 5000 --tokens "$(tokens ES256 1)"

say "membership store (file) on: the same one-token closed loop"
stop "$citadel_pid"
start_citadel members
lg_run srv_citadel_members_file_closed "$citadel_pid" "$GRPC_PORT" "${closed[@]}" --tokens "$(tokens ES256 1)"
stop "$citadel_pid"

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
