#!/usr/bin/env bash
# Quick start: install what is missing, build, and run `scaleset up` on the example.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -p scaleset -p my_app
exec ./target/release/scaleset up "$@"
