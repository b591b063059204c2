# The closing lines of scripts/test.sh, from the `cargo test` log (stdout and stderr) and the
# skips file (`binary<TAB>test<TAB>reason` lines written by testkit::require):
#   tests: N passed, N failed, N skipped
# summed over every test binary. libtest reports a skipping test as "ok"; a test counts as
# skipped, not passed, when its binary (from cargo's "Running … (target/…/deps/<binary>)" line)
# and name match a recorded skip. A test that recorded a skip and then failed is a failure.
# Usage: awk -v skips=FILE -f scripts/test-summary.awk LOG
/^ +Running / { bin = $NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin) }
/^ +Doc-tests / { bin = "" }
/^test .* \.\.\. ok$/ {
  name = $0; sub(/^test /, "", name); sub(/ \.\.\. ok$/, "", name)
  ok[bin "\t" name] = 1
}
/^test result:/ {
  for (i = 2; i <= NF; i++) {
    if ($i ~ /^passed;?$/) p += $(i - 1)
    if ($i ~ /^failed;?$/) f += $(i - 1)
    if ($i ~ /^ignored;?$/) ig += $(i - 1)
  }
}
END {
  while (skips != "" && (getline line < skips) > 0) {
    split(line, a, "\t"); key = a[1] "\t" a[2]
    if (!(key in seen)) { seen[key] = 1; if (key in ok) s++ }
  }
  if (ig) printf "not run by design: %d #[ignore] tests (benchmarks, the from-scratch base build)\n", ig
  printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s
}
