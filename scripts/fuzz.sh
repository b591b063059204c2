#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ (cargo-fuzz layout, libFuzzer + AddressSanitizer) and runs
# each for FUZZ_SECONDS (default 20). Any crash, leak, timeout or build failure fails the script,
# naming the target and the input libFuzzer saved under fuzz/artifacts/<target>/.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes). Only the stable
# toolchain is installed, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them; it applies to
# the fuzz build only (its own target dir, fuzz/target). cargo-fuzz itself is installed from
# crates.io when missing (a pinned version, --locked).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-20}"
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version from crates.io" >&2
  cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
echo "fuzz: building $(echo "$targets" | wc -w) targets"
start=$(date +%s)
cargo fuzz build
echo "fuzz: built in $(($(date +%s) - start)) s"
failed=()
for t in $targets; do
  mkdir -p "corpus/$t"
  # -timeout: one input taking longer than 10 s is a hang; -rss_limit_mb: a blow-up is a crash.
  log=$(mktemp)
  if cargo fuzz run "$t" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz: $t: ${runs:-?} runs in ${seconds} s, no crash"
  else
    tail -n 40 "$log"
    echo "fuzz: $t FAILED; input saved in fuzz/artifacts/$t/ (replay: cargo fuzz run $t <file>)" >&2
    failed+=("$t")
  fi
  rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} targets failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: $(echo "$targets" | wc -w) targets, ${seconds} s each, no crash"
