#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the integration tests that boot real
# machines (root, systemd-nspawn, debootstrap). One debootstrap base is shared by every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export SCALESET_BASE_CACHE="${SCALESET_BASE_CACHE:-/var/tmp/scaleset-test-base}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
