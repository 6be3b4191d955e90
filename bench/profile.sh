#!/usr/bin/env bash
# Profile citadel-authz under load with perf (DWARF call graphs; the release binary keeps its
# symbols and .eh_frame, so no special build is needed) and print where a check's time goes.
#
#   bench/profile.sh cached|uncached|rules1000 [SECONDS]
#
# Uses the fixtures and configs of the last bench/run.sh (bench/work/). CPU 1: citadel-authz and
# the JWKS file server; CPU 0: loadgen. Output: bench/work/perf-<case>.data and a callee split.
set -euo pipefail
case_=${1:?usage: bench/profile.sh cached|uncached|rules1000 [SECONDS]}
secs=${2:-4}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$root/bench/work"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[ -f "$work/citadel-10.yaml" ] || { echo "run bench/run.sh --quick first" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }

big=$(ls "$work"/fixtures/tokens-ES256-*.txt | sort -t- -k3 -n | tail -n 1)
case $case_ in
  cached) cfg=citadel-10.yaml; lg=(--duration $((secs + 4)) --tokens "$work/fixtures/tokens-ES256-1.txt") ;;
  rules1000) cfg=citadel-1000.yaml; lg=(--duration $((secs + 4)) --tokens "$work/fixtures/tokens-ES256-1.txt") ;;
  uncached) cfg=citadel-10.yaml; lg=(--duration 600 --count "$(wc -l < "$big")" --tokens "$big") ;;
  *) echo "unknown case $case_" >&2; exit 2 ;;
esac

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
taskset -c 1 python3 -m http.server --bind 127.0.0.1 --directory "$work/fixtures" 28080 >/dev/null 2>&1 &
pids+=($!)
RUST_LOG=warn taskset -c 1 "$bin/citadel-authz" serve --config "$work/$cfg" >"$work/profile-citadel.log" 2>&1 &
cpid=$!; pids+=($cpid)
deadline=$((SECONDS + 30))
until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:28192/readyz || true)" = 200 ]; do
  [ $SECONDS -lt $deadline ] || { echo "citadel-authz not ready" >&2; exit 1; }
  sleep 0.1
done
taskset -c 0 "$bin/examples/loadgen" --target 127.0.0.1:28191 --concurrency 64 --connections 2 "${lg[@]}" >/dev/null &
lpid=$!; pids+=($lpid)
sleep 1
perf record -F 500 --call-graph dwarf,16384 -p "$cpid" -o "$work/perf-$case_.data" -- sleep "$secs" 2>/dev/null
wait "$lpid" || true
perf script -i "$work/perf-$case_.data" -F comm,tid,ip,sym 2>/dev/null > "$work/perf-$case_.txt"
python3 "$root/bench/perf_callees.py" "$work/perf-$case_.txt" \
  'AuthzService as envoy_types.*check' 'citadel_authz::authorizer::check' 'Policy::find' \
  'Unverified::verify_with' 'Key::verify'
