#!/usr/bin/env bash
# Run every suite and print one closing line "N passed, N failed" totalling
# all of them; exit non-zero on any failure.  Called by `make test` after the
# build (normal and ASan/UBSan).
#
#   1. C unit tests, built with ASan + UBSan (leak checking on)
#   2. busted specs against the core (Lua module) and build/blueprint
#   3. the #cli specs and golden fixtures again, against build/asan/blueprint
#   4. the fuzz harnesses (build/fuzz/): committed corpora replayed, then a
#      short run of each
#   5. the embedders (scripts/test-embed.sh): `make install` into a temporary
#      prefix, the exported symbols, examples/embed-c and examples/embed-go
#      built with pkg-config only and compared with dry-run on the goldens
#   6. the #serve specs again, against build/tsan/blueprint (ThreadSanitizer);
#      a data race reported by any server process fails the suite
#   7. the #kafka specs (cluster mode: three nodes on librdkafka's mock
#      cluster), against build/asan/blueprint only: librdkafka is not built
#      for ThreadSanitizer, which would report its own atomics as races
#   8. the web console in headless Chromium (tests/browser/run.py): serve,
#      the emulator and a browser through the console's scenarios
#   9. nothing the suites started is still running: a server or emulator of
#      this checkout's build/ left behind is a failure (and is stopped)
#
# Suites 1-5 run in two lanes at once (2 with 1, 3, 4, 5), then 6 beside 7
# and 8: they mostly wait on servers and process starts, so two lanes take
# about half the wall time on a 2-core machine.  Output is printed in the
# order above once every suite has ended.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

# PIDs of the processes running a program of this checkout's build/ (the
# emulator, serve in each build, the Kafka mock): matched by /proc/PID/exe,
# so other checkouts' test runs on the same machine are never counted.
ours() {
  local exe target pid
  for exe in /proc/[0-9]*/exe; do
    target=$(readlink "$exe" 2>/dev/null) || continue
    case $target in "$ROOT"/build/*) pid=${exe#/proc/}; echo "${pid%/exe}" ;; esac
  done | sort
}
already_running=$(ours)   # e.g. a `make run` of this checkout: not ours to judge

passed=0 failed=0 skipped=0
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp"   # librdkafka's own allocations only

# Count TAP lines ("ok N", "not ok N", "# SKIP") from a suite's output file.
count_tap() {
  local file=$1 p f s
  p=$(grep -cE '^ok [0-9]+' "$file" || true)
  s=$(grep -cE '^ok [0-9]+.*# (SKIP|skip)' "$file" || true)
  f=$(grep -cE '^not ok [0-9]+' "$file" || true)
  passed=$((passed + p - s)); failed=$((failed + f)); skipped=$((skipped + s))
}

# Suites run in two lanes at once (most of their time is spent waiting on
# servers, sleeps and process starts, not on the CPU); each writes its output
# to a file of its own, and the results are printed and counted in the order
# below once all have ended.
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
run() {   # run ID NAME COMMAND… : run a suite into $W/ID.*
  local id=$1 name=$2; shift 2
  echo "$name" > "$W/$id.name"
  local started=$SECONDS
  "$@" > "$W/$id.log" 2>&1
  echo $? > "$W/$id.rc"
  echo $((SECONDS - started)) > "$W/$id.time"
}

report() {   # report ID : show a suite's failures, count its results
  local id=$1 name log rc
  name=$(cat "$W/$id.name"); log=$W/$id.log; rc=$(cat "$W/$id.rc")
  echo "== $name"
  echo "   ($(cat "$W/$id.time") s)"
  grep -vE '^ok ' "$log" | sed 's/^/   /'
  if grep -qE '^(not )?ok [0-9]+' "$log"; then
    local before_p=$passed before_f=$failed
    count_tap "$log"
    echo "   $((passed - before_p)) passed, $((failed - before_f)) failed"
    # a crash or sanitizer abort after the last TAP line still fails the suite
    if [ "$rc" -ne 0 ] && ! grep -qE '^not ok' "$log"; then failed=$((failed + 1)); echo "   $name exited $rc"; fi
  else
    local p f
    p=$(sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$log")
    f=$(sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$log")
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
    if [ "$rc" -ne 0 ] && [ "${f:-0}" = 0 ]; then failed=$((failed + 1)); echo "   $name exited $rc"; fi
  fi
}

BUSTED=(lua5.4 /usr/bin/busted --cpath='build/lua/?.so' --lpath='tests/spec/?.lua' -o TAP)

# ThreadSanitizer reports go to files (the servers' stderr is their log);
# each report is one failure.
tsan_reports=$(mktemp -d)

# Lane 1: the busted specs (the longest suite).  Lane 2: the sanitizer and
# build suites.  Then the ThreadSanitizer serve specs beside the cluster and
# browser suites.
( run specs "busted specs" env BLUEPRINT_BIN=build/blueprint "${BUSTED[@]}" --exclude-tags=kafka tests/spec ) &
lane1=$!
( run unit "C unit tests (ASan+UBSan)" build/asan/unit_tests
  run cli "CLI specs and golden fixtures (ASan+UBSan build)" \
    env BLUEPRINT_BIN=build/asan/blueprint BLUEPRINT_TEST_SANITIZER=address "${BUSTED[@]}" --tags=cli tests/spec
  run fuzz "fuzzers (libFuzzer, ASan+UBSan): corpora replayed, then a short run each" scripts/fuzz-replay.sh
  run embed "embedders: make install into a temporary prefix, nm -D, the C and Go examples built with pkg-config = dry-run" \
    scripts/test-embed.sh ) &
lane2=$!
wait $lane1 $lane2
( run tsan "serve specs (ThreadSanitizer build)" \
    env BLUEPRINT_BIN=build/tsan/blueprint BLUEPRINT_TEST_SANITIZER=thread \
        TSAN_OPTIONS="log_path=$tsan_reports/report second_deadlock_stack=1" \
    "${BUSTED[@]}" --tags=serve tests/spec ) &
lane1=$!
( run kafka "cluster specs: serve --kafka on a mock Kafka cluster (ASan+UBSan build)" \
    env BLUEPRINT_BIN=build/asan/blueprint BLUEPRINT_TEST_SANITIZER=address "${BUSTED[@]}" --tags=kafka tests/spec
  run browser "web console in a real browser (headless Chromium, selenium; screenshots in build/screenshots)" \
    /usr/bin/python3 tests/browser/run.py ) &
lane2=$!
wait $lane1 $lane2

for id in unit specs cli fuzz embed tsan; do report $id; done
for report in "$tsan_reports"/report*; do
  [ -e "$report" ] || continue
  failed=$((failed + 1))
  echo "   ThreadSanitizer: $(grep -m1 'WARNING' "$report")"
  sed 's/^/     /' "$report" | head -60
done
rm -rf "$tsan_reports"
for id in kafka browser; do report $id; done

# Every suite stops what it starts; poll a little for processes just sent
# SIGTERM, then count each one left as a failure and stop it.
echo "== nothing the suites started is still running"
leftover=""
for _ in $(seq 50); do
  leftover=$(comm -13 <(echo "$already_running") <(ours))
  [ -z "$leftover" ] && break
  sleep 0.1
done
if [ -n "$leftover" ]; then
  for pid in $leftover; do
    failed=$((failed + 1))
    echo "   not ok: still running after the suites: $(ps -o pid=,args= -p "$pid" 2>/dev/null)"
    kill -TERM "$pid" 2>/dev/null
  done
else
  passed=$((passed + 1))
  echo "   1 passed, 0 failed"
fi

echo
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
