#!/usr/bin/env bash
# The one command that runs every test: installs what the tests run for real (Envoy, nginx,
# Caddy, the OpenID provider), then format check, clippy and the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-test-deps.sh
export CITADEL_TEST_ENVOY="$PWD/.tools/bin/envoy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
