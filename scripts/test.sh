#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the integration tests that boot real
# machines (root, systemd-nspawn, debootstrap; one debootstrap base is shared by every test) and
# a bounded run of every fuzz target (scripts/fuzz.sh).
#
# A test whose prerequisite is missing calls testkit::require, which under CI (`CI` set, as
# .ci/run does) fails the test, and elsewhere appends a line to $SCALESET_TEST_SKIPS. libtest
# counts such a test as passed; the summary below moves it to "skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export SCALESET_BASE_CACHE="${SCALESET_BASE_CACHE:-/var/tmp/scaleset-test-base}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
SCALESET_TEST_SKIPS=$(mktemp)
export SCALESET_TEST_SKIPS
trap 'rm -f "$log" "$SCALESET_TEST_SKIPS"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ "${SKIP_FUZZ:-}" != 1 ]; then
  ./scripts/fuzz.sh || status=$?
fi
echo
if [ -s "$SCALESET_TEST_SKIPS" ]; then
  echo "skipped (prerequisite missing):"
  sort -u "$SCALESET_TEST_SKIPS" | awk -F'\t' '{ printf "  %s %s: %s\n", $1, $2, $3 }'
fi
# One closing line for the whole run: tests: N passed, N failed, N skipped.
summary=$(awk -v skips="$SCALESET_TEST_SKIPS" -f scripts/test-summary.awk "$log")
echo "$summary"
# Under CI testkit::require panics instead of recording, so nothing can be in the file.
case "${CI:-}" in
  "" | 0 | false) ;;
  *) if [ -s "$SCALESET_TEST_SKIPS" ]; then
       echo "CI: tests were skipped; under CI every prerequisite must be installed" >&2
       status=1
     fi ;;
esac
exit $status
