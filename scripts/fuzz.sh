#!/usr/bin/env bash
# Run every fuzz target (fuzz/, cargo-fuzz with the nightly toolchain) for SECONDS each, then
# minimise its corpus into fuzz/corpus/<target>/ (committed; `cargo test` replays it on stable).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default 60 s each, every target
#
# Installs cargo-fuzz (crates.io) if missing. A crash stops the script with the input saved
# under fuzz/artifacts/<target>/: add it to fuzz/corpus/<target>/ once fixed, so the stable
# replay keeps it. Only loopback is touched: no target does network I/O.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

cargo +nightly --version >/dev/null 2>&1 || { echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cd "$root/fuzz"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s" >&2
  mkdir -p "corpus/$t" "work/$t"
  # New inputs go to work/ (git-ignored); the committed corpus is only read here.
  cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- -max_total_time="$seconds" \
    -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12 >&2
  # Minimise what both hold into the committed corpus (cmin works in place).
  cp -n "work/$t"/* "corpus/$t"/ 2>/dev/null || true
  cargo +nightly fuzz cmin "$t" "corpus/$t" >/dev/null 2>&1 || echo "fuzz: cmin $t failed; corpus kept unminimised" >&2
done
