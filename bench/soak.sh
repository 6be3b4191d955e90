#!/usr/bin/env bash
# citadel-authz soak test (issue #13): real Envoy → citadel-authz at about half the measured
# maximum, for 30 minutes, while the IdP's keys rotate, the JWKS endpoint goes down, the membership
# database stops and starts, the introspection endpoint hangs, the policy file is rewritten (valid
# and invalid versions), and hostile tokens and slow clients arrive.
#
#   bench/soak.sh            full run: 30 min of load, then 100 s idle (~34 min in all)
#   bench/soak.sh --quick    2 min of load with one of each fault, then 100 s idle (~5 min in all)
#
# SOAK_RATE=N fixes the rate (requests/s) instead of half the measured maximum.
#
# Pieces: bench/soak_idp.py (keys and tokens for every key generation, minted up front; JWKS,
# introspection and a control port to break them), bench/soak_load.py (open-loop client into
# Envoy that classifies every answer), bench/soak_attack.py (hostile requests, slow clients),
# bench/soak_faults.py (the fault schedule; RSS/fd sampler), bench/soak_report.py (the report).
# Loopback only, ports 29000-29432. Clients on CPU 0; Envoy, citadel-authz, PostgreSQL and the
# IdP on CPU 1. The cleanup trap stops everything, also on failure or Ctrl-C. Writes
# bench/results/soak-latest.md (+ raw files soak-latest-*) and prints it; exits 1 when a target
# is missed.
set -euo pipefail

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  *) echo "usage: bench/soak.sh [--quick]" >&2; exit 2 ;;
esac
command_line="bench/soak.sh${1:+ $1}${SOAK_RATE:+ (SOAK_RATE=$SOAK_RATE)}"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$root/bench"
work="$bench/work-soak"
fx="$work/fixtures"
results="$bench/results"
target="${CARGO_TARGET_DIR:-$root/target}"
envoy="$root/.tools/bin/envoy"

export ISSUER=https://iam.soak.local AUDIENCE=https://api.soak.local
ENVOY_PORT=29000 ENVOY_ADMIN_PORT=29001 JWKS_PORT=29080 CTL_PORT=29081 INTRO_PORT=29094
GRPC_PORT=29191 HTTP_PORT=29192 PG_PORT=29432
REFRESH_MIN=10 MAX_STALE=120 MAX_AGE=30 MEMBER_TTL=15 MEMBER_STALE=300 HEADER_TIMEOUT=5
# Small enough that the first token switch fills the token cache: memory is judged once the caches
# are at their bounds (a filling cache is growth by design, ~360 B a token).
TOKEN_CACHE=20000
NEW_RATE=5            # new users / new opaque tokens per second (each class)
COOL=100              # sampling goes on this long after the load (idle HTTP pools close after 90 s)
read -r DUR WARM GENS < <(python3 "$bench/soak_faults.py" info "$mode")

say() { printf '\n[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
for t in python3 curl taskset; do command -v $t >/dev/null || { echo "soak: $t is required" >&2; exit 1; }; done
[ "$(nproc)" -ge 2 ] || { echo "soak: needs 2 CPUs (clients and servers are pinned apart)" >&2; exit 1; }
if ! command -v wrk >/dev/null 2>&1; then
  say "installing wrk (apt)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
if ! "$envoy" --version 2>/dev/null | grep '/1\.40\.' >/dev/null; then
  say "installing Envoy (scripts/install-test-deps.sh --envoy-only)"
  "$root/scripts/install-test-deps.sh" --envoy-only
fi
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check cryptography
python3 -c 'import uvloop' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check uvloop \
  || say "uvloop not installed: the load client falls back to plain asyncio (slower)"
pg_bin=${CITADEL_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$pg_bin/initdb" ] || { echo "soak: PostgreSQL not found (apt-get install -y postgresql)" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $ENVOY_PORT $ENVOY_ADMIN_PORT $JWKS_PORT $CTL_PORT $INTRO_PORT $GRPC_PORT $HTTP_PORT $PG_PORT; do
  port_free "$p" || { echo "soak: port $p is in use" >&2; exit 1; }
done

say "building citadel-authz (release)"
# The tree may be mid-edit by someone else: one retry after a minute.
(cd "$root" && cargo build --release --bin citadel-authz -q) \
  || { say "build failed; retrying in 60 s"; sleep 60; (cd "$root" && cargo build --release --bin citadel-authz -q); }

rm -rf "$work"; mkdir -p "$work/bin" "$fx" "$results"
# A private copy: another `cargo build` in this tree during the run cannot swap the binary.
cp "$target/release/citadel-authz" "$work/bin/"
built_at=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')

# --- processes ---------------------------------------------------------------------------------
pids=()
pg_data=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$pg_data" ] || as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: run CMD in the background pinned to CPU, logging to work/NAME.log.
start() {
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" >"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
}
wait_http() {
  local url=$1 deadline=$((SECONDS + ${2:-30}))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || { echo "soak: timed out waiting for $url" >&2; return 1; }
    sleep 0.1
  done
}

# --- tokens: every key generation minted up front (both CPUs, before anything runs) -------------
say "minting $GENS key generations × 10,000 tokens (ES256, RS256, EdDSA), hostile and opaque tokens"
python3 "$bench/soak_idp.py" mint "$fx" --gens "$GENS" --issuer "$ISSUER" --audience "$AUDIENCE" \
  --jwks-port "$JWKS_PORT" --users 10000 --new 1000 --opaque 1000 --opaque-new $((NEW_RATE * DUR + 1000)) --storm 10000

# --- PostgreSQL: a private cluster in work-soak/pg, as bench/run.sh starts one ------------------
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_dir="$work/pg"
mkdir -p "$pg_dir/sock"
[ "$(id -u)" != 0 ] || chown -R postgres: "$pg_dir"
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --no-sync -E UTF8 --locale=C > "$pg_dir/initdb.log" 2>&1 \
  || { cat "$pg_dir/initdb.log" >&2; echo "soak: initdb failed" >&2; exit 1; }
printf "\nport = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 100\nshared_buffers = 64MB\n" \
  "$PG_PORT" "$pg_dir/sock" | as_pg tee -a "$pg_dir/data/postgresql.conf" >/dev/null
pg_data="$pg_dir/data"
run_pg=(); [ "$(id -u)" != 0 ] || run_pg=(runuser -u postgres --)
pg_start_cmd=$(printf '%q ' taskset -c 1 "${run_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_dir/server.log" -w -t 60 start)
pg_stop_cmd=$(printf '%q ' "${run_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w -t 30 stop)
bash -c "$pg_start_cmd" >/dev/null || { cat "$pg_dir/server.log" >&2; echo "soak: PostgreSQL did not start" >&2; exit 1; }
psql_su() { as_pg "$pg_bin/psql" -h "$pg_dir/sock" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAtX "$@"; }
pg_pw=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
psql_su -d postgres -c "CREATE ROLE citadel LOGIN PASSWORD '$pg_pw'"
psql_su -d postgres -c "CREATE DATABASE policy OWNER citadel"
awk '{ print "soak," $1 ",acme,member" }' "$fx/users.txt" > "$work/memberships.csv"
chmod a+r "$work/memberships.csv"
psql_su -d policy <<SQL
CREATE TABLE memberships (issuer text NOT NULL, subject text NOT NULL, tenant text NOT NULL, role text);
CREATE INDEX ON memberships (issuer, subject);
\\copy memberships FROM '$work/memberships.csv' WITH (FORMAT csv)
CREATE FUNCTION citadel_membership_notify() RETURNS trigger AS \$\$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN PERFORM pg_notify('citadel_membership', OLD.issuer || ' ' || OLD.subject); END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN PERFORM pg_notify('citadel_membership', NEW.issuer || ' ' || NEW.subject); END IF;
  RETURN NULL;
END \$\$ LANGUAGE plpgsql;
CREATE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON memberships
  FOR EACH ROW EXECUTE FUNCTION citadel_membership_notify();
GRANT SELECT ON memberships TO citadel;
ANALYZE memberships;
SQL
export CITADEL_AUTHZ_DATABASE_URL="postgres://citadel:$pg_pw@127.0.0.1:$PG_PORT/policy"

# --- the IdP, citadel-authz, Envoy (CPU 1) ----------------------------------------------------
start idp 1 python3 "$bench/soak_idp.py" serve "$fx" --issuer "$ISSUER" --audience "$AUDIENCE" \
  --jwks-port "$JWKS_PORT" --intro-port "$INTRO_PORT" --ctl-port "$CTL_PORT" --max-age "$MAX_AGE"
idp_pid=$started
wait_http "http://127.0.0.1:$JWKS_PORT/jwks.json"

export CITADEL_SOAK_INTROSPECTION_SECRET
CITADEL_SOAK_INTROSPECTION_SECRET=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
python3 "$bench/soak_faults.py" policy "$work/policy.yaml"
cat > "$work/citadel.yaml" <<YAML
# citadel-authz under soak (bench/soak.sh): short JWKS and membership timings so that every fault
# crosses them within minutes.
listen:
  grpc: 127.0.0.1:$GRPC_PORT
  http: 127.0.0.1:$HTTP_PORT
issuers:
  - name: soak
    issuer: $ISSUER
    jwks_uri: http://127.0.0.1:$JWKS_PORT/jwks.json
    audiences: [$AUDIENCE]
    algorithms: [ES256, RS256, EdDSA]
    introspection:
      endpoint: http://127.0.0.1:$INTRO_PORT/introspect
      client_id: citadel-soak
      client_secret_env: CITADEL_SOAK_INTROSPECTION_SECRET
      tokens: opaque
      cache_ttl: 1h
      timeout: 250ms
token_cache:
  capacity: $TOKEN_CACHE
jwks:
  refresh_min: ${REFRESH_MIN}s
  refresh_max: 5m
  max_stale: ${MAX_STALE}s
  fetch_timeout: 1s
limits:
  header_timeout: ${HEADER_TIMEOUT}s
membership:
  postgres:
    url_env: CITADEL_AUTHZ_DATABASE_URL
    query: SELECT tenant, role FROM memberships WHERE issuer = \$1 AND subject = \$2
    notify_channel: citadel_membership
    pool_size: 4
    connect_timeout: 1s
  cache_ttl: ${MEMBER_TTL}s
  max_stale: ${MEMBER_STALE}s
  capacity: 100000
policy:
  file: policy.yaml
YAML
"$work/bin/citadel-authz" check-config --config "$work/citadel.yaml" >/dev/null \
  || { "$work/bin/citadel-authz" check-config --config "$work/citadel.yaml" >&2 || true; exit 1; }
start citadel 1 env RUST_LOG=warn "$work/bin/citadel-authz" serve --config "$work/citadel.yaml"
citadel_pid=$started
wait_http "http://127.0.0.1:$HTTP_PORT/readyz" 60

cat > "$work/envoy.yaml" <<YAML
# Envoy in front of citadel-authz for the soak: every request is checked over gRPC ext_authz,
# then answered with a direct_response.
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT } }
static_resources:
  listeners:
    - name: ingress
      address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: soak
                common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: / }
                          direct_response: { status: 200, body: { inline_string: "ok\n" } }
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service:
                        envoy_grpc: { cluster_name: authz }
                        timeout: 1s
                      failure_mode_allow: false
                      status_on_error: { code: ServiceUnavailable }
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: authz
      type: STATIC
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment:
        cluster_name: authz
        endpoints:
          - lb_endpoints:
              - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $GRPC_PORT } } }
YAML
"$envoy" --mode validate -c "$work/envoy.yaml" -l error >/dev/null || { echo "soak: invalid envoy.yaml" >&2; exit 1; }
start envoy 1 "$envoy" -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning
envoy_pid=$started
wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"

# expect CODE PATH [TOKEN]: one request through Envoy must get CODE (config sanity).
expect() {
  local want=$1 path=$2 got auth=()
  [ -z "${3:-}" ] || auth=(-H "Authorization: Bearer $3")
  got=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$ENVOY_PORT$path")
  [ "$got" = "$want" ] || { echo "soak: sanity check failed: $path got $got, want $want" >&2; exit 1; }
}
jwt0=$(head -n 1 "$fx/g0/jwt.txt")
expect 200 /api/orders/42 "$jwt0"
expect 200 /api/tenants/acme/items/7 "$jwt0"
expect 200 /api/orders/42 "$(head -n 1 "$fx/opaque.txt")"
expect 403 /api/admin/users "$jwt0"
expect 401 /api/orders/42

# --- the maximum, then half of it --------------------------------------------------------------
say "measuring the maximum: wrk closed loop, 32 connections, the 10k generation-0 tokens (5 s warm-up, best of 2 × 5 s)"
wrk_envoy() { taskset -c 0 wrk -t1 -c32 -d"$1" -s "$bench/rotate.lua" "http://127.0.0.1:$ENVOY_PORT/api/orders/42" -- "$fx/g0/jwt.txt"; }
wrk_envoy 5s >/dev/null
max_rps=0
for i in 1 2; do
  wrk_envoy 5s > "$work/wrk-max-$i.txt"
  if grep -q 'Non-2xx' "$work/wrk-max-$i.txt"; then
    cat "$work/wrk-max-$i.txt" >&2; echo "soak: non-2xx answers while measuring the maximum" >&2; exit 1
  fi
  r=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$work/wrk-max-$i.txt")
  [ "$r" -le "$max_rps" ] || max_rps=$r
done
if [ -n "${SOAK_RATE:-}" ]; then
  rate=$SOAK_RATE; rate_note="$rate requests/s (fixed by SOAK_RATE; measured maximum $max_rps/s)"
else
  rate=$((max_rps / 2)); rate_note="$rate requests/s = half of the measured maximum of $max_rps/s (wrk, closed loop, 32 connections, rotating 10k JWTs)"
fi
rate_note="$rate_note, plus $NEW_RATE/s new users and $NEW_RATE/s new opaque tokens"
say "soak: $rate requests/s for $DUR s ($mode)"

# --- the soak ------------------------------------------------------------------------------------
t0=$(( $(date +%s) + 3 ))
start sampler 0 python3 "$bench/soak_faults.py" sample --pid "$citadel_pid" --t0 "$t0" --duration $((DUR + COOL)) \
  --metrics "http://127.0.0.1:$HTTP_PORT/metrics" --out "$work/samples.csv" --other "envoy=$envoy_pid" --other "idp=$idp_pid"
sampler_pid=$started
start faults 0 python3 "$bench/soak_faults.py" run "$mode" --t0 "$t0" --log "$work/faults.jsonl" \
  --state "$work/state.json" --ctl "http://127.0.0.1:$CTL_PORT" --metrics "http://127.0.0.1:$HTTP_PORT/metrics" \
  --policy "$work/policy.yaml" --pg-stop "$pg_stop_cmd" --pg-start "$pg_start_cmd" --work "$work" --fixtures "$fx" \
  --envoy-port "$ENVOY_PORT" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT"
faults_pid=$started
sleep 0.5   # the schedule writes state.json (generation 0) before the client reads it
tail -f "$work/faults.log" >&2 &
tail_pid=$!; pids+=("$tail_pid")
# In the background and waited for: `wait` returns at a signal, so Ctrl-C / SIGTERM reach the trap.
start load 0 python3 "$bench/soak_load.py" --port "$ENVOY_PORT" --rate "$rate" --new-rate "$NEW_RATE" \
  --t0 "$t0" --duration "$DUR" --conns 256 --fixtures "$fx" --state "$work/state.json" --out "$work/load.jsonl"
load_pid=$started
tail -f "$work/load.log" >&2 &
pids+=("$!")
wait "$load_pid" || { echo "soak: the load client failed:" >&2; tail -n 20 "$work/load.log" >&2; exit 1; }
wait "$faults_pid" || say "the fault schedule exited with $?"
say "load done; sampling citadel-authz idle for $COOL s more (pooled connections time out)"
wait "$sampler_pid" || true
# What citadel-authz holds open now, for the report (the fd target compares with the start).
ls -l "/proc/$citadel_pid/fd" > "$work/fds-end.txt" 2>/dev/null || true
{ command -v ss >/dev/null && ss -tanp | grep "pid=$citadel_pid," || true; } > "$work/sockets-end.txt"
kill "$tail_pid" 2>/dev/null || true

# --- report --------------------------------------------------------------------------------------
curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" > "$work/metrics-end.txt" || true
curl -sf "http://127.0.0.1:$CTL_PORT/stats" > "$work/idp-stats.json"
alive=false; kill -0 "$citadel_pid" 2>/dev/null && alive=true
python3 - "$work/meta.json" <<PY
import json, sys
json.dump({"mode": "$mode", "command": "$command_line", "commit": "$built_at", "date": "$(date -u +%Y-%m-%dT%H:%MZ)",
           "machine": "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)",
           "t0": $t0, "duration": $DUR, "warmup": $WARM, "cooldown": $COOL, "rate": $rate, "max_rps": $max_rps, "rate_note": "$rate_note",
           "refresh_min_s": $REFRESH_MIN, "max_stale_s": $MAX_STALE, "max_age_s": $MAX_AGE,
           "membership_ttl_s": $MEMBER_TTL, "membership_stale_s": $MEMBER_STALE, "header_timeout_s": $HEADER_TIMEOUT,
           "token_cache_capacity": $TOKEN_CACHE,
           "citadel_alive": "$alive" == "true"}, open(sys.argv[1], "w"))
PY
cp "$work/load.jsonl" "$results/soak-latest-load.jsonl"
cp "$work/samples.csv" "$results/soak-latest-samples.csv"
cp "$work/faults.jsonl" "$results/soak-latest-faults.jsonl"
cp "$work/idp-stats.json" "$results/soak-latest-idp.json"
status=0
python3 "$bench/soak_report.py" "$work" "$work/meta.json" "$results/soak-latest.md" || status=$?
exit $status
