#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the integration tests that boot real
# machines (root, systemd-nspawn, debootstrap). One debootstrap base is shared by every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export SCALESET_BASE_CACHE="${SCALESET_BASE_CACHE:-/var/tmp/scaleset-test-base}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
