#!/usr/bin/env bash
# The fuzzers' part of `make test`: each harness (build/fuzz/fuzz_*, built
# with ASan+UBSan) replays its committed corpus (tests/fuzz/corpus/NAME),
# then fuzzes for FUZZ_TEST_SECONDS (default 10) from it, into a scratch
# corpus.  One TAP line per step; a crash or mismatch is a failure with the
# fuzzer's report and the input saved under build/fuzz/.
set -u
cd "$(dirname "$0")/.."
secs=${FUZZ_TEST_SECONDS:-10}
n=0
for f in json config reader engine jwt pattern bodies; do
  bin=build/fuzz/fuzz_$f corpus=tests/fuzz/corpus/$f
  log=$(mktemp)
  n=$((n + 1))
  if "$bin" -runs=0 "$corpus" > "$log" 2>&1; then
    echo "ok $n - fuzz_$f replays its corpus ($(ls "$corpus" | wc -l) inputs)"
  else
    echo "not ok $n - fuzz_$f replays its corpus"; sed 's/^/# /' "$log" | tail -40
  fi
  scratch=$(mktemp -d)
  n=$((n + 1))
  if "$bin" -max_total_time="$secs" -timeout=10 -artifact_prefix="build/fuzz/$f-" "$scratch" "$corpus" > "$log" 2>&1; then
    echo "ok $n - fuzz_$f for ${secs}s ($(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log") runs)"
  else
    echo "not ok $n - fuzz_$f for ${secs}s: input saved as build/fuzz/$f-*"; sed 's/^/# /' "$log" | tail -40
  fi
  rm -rf "$scratch" "$log"
done
echo "1..$n"
