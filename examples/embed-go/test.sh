#!/bin/sh
# examples/embed-go/test.sh PREFIX — the Go embedder against an installed library.
#
# Builds examples/embed-go with cgo through pkg-config only
# (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig; no CGO_CFLAGS/LDFLAGS), once plainly and
# once with -race, runs both (LD_LIBRARY_PATH=PREFIX/lib) on every golden case
# (blueprints/*/tests/*/: config + events.ndjson) and on a longer stream, and
# compares their output byte for byte with `blueprint dry-run`.  Under -race a
# race report fails the case.  A copy of the ActiveCampaign blueprint whose
# mappings spin 0.1 s of CPU time each makes the sandbox's watchdog signal the
# Go-locked threads (SIGRTMIN+2) while they run Lua.
#
# Prints TAP lines numbered from 1 without a plan (scripts/test-embed.sh
# prints it); exits 1 when any line is "not ok".  Needs go (Debian golang-go),
# gcc and pkg-config; downloads nothing (GOPROXY=off, caches in a temp dir).
set -u

PREFIX=${1:?usage: examples/embed-go/test.sh PREFIX}
PREFIX=$(cd "$PREFIX" && pwd) || exit 1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/embed-go.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT INT TERM

# Go's caches in the temp dir: CI runs as root on a clean machine, HOME may be unset.
export HOME="${HOME:-$TMP}" GOCACHE="$TMP/gocache" GOPATH="$TMP/gopath" GOTMPDIR="$TMP"
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GO111MODULE=on CGO_ENABLED=1 GOWORK=off
unset CGO_CFLAGS CGO_CPPFLAGS CGO_LDFLAGS GOROOT 2>/dev/null
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
export LD_LIBRARY_PATH="$PREFIX/lib"
mkdir -p "$GOCACHE" "$GOPATH"

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
    n=$((n + 1)); failed=1; echo "not ok $n - $1"
    [ $# -gt 1 ] && [ -s "$2" ] && head -c 2000 "$2" | sed 's/^/# /'
    return 0
}

BIN="$TMP/embed-go"
RACE="$TMP/embed-go-race"

# The reference: the repository's dry-run CLI (BLUEPRINT_CLI overrides; the installed one if the
# tree has none).
DRY="${BLUEPRINT_CLI:-$REPO/build/blueprint}"
[ -x "$DRY" ] || DRY="$PREFIX/bin/blueprint"

if ! command -v go >/dev/null 2>&1; then
    not_ok "go: the go command is missing (Debian golang-go: make deps)"
    exit 1
fi

build() { # build OUT LABEL [FLAGS…]
    out=$1 label=$2; shift 2
    start=$(date +%s)
    if (cd "$HERE" && go build "$@" -o "$out" .) >"$TMP/build.log" 2>&1; then
        ok "go: $label with pkg-config against PREFIX ($(go env GOVERSION), $(( $(date +%s) - start )) s)"
    else
        not_ok "go: $label with pkg-config against PREFIX failed" "$TMP/build.log"
    fi
}
build "$BIN" "go build"
build "$RACE" "go build -race" -race

if [ -x "$BIN" ]; then
    if ldd "$BIN" 2>/dev/null | grep -q "libblueprint\.so.* => $PREFIX/lib/"; then
        ok "go: the example links libblueprint.so from PREFIX/lib"
    else
        ldd "$BIN" >"$TMP/ldd.txt" 2>&1
        not_ok "go: the example does not link libblueprint.so from PREFIX/lib" "$TMP/ldd.txt"
    fi
fi

# run BIN LABEL BLUEPRINT CONFIG EVENTS WORKERS [FLAGS]: compare with dry-run
# (the example's stderr is left in $TMP/got.err).
run() {
    bin=$1 label=$2 bp=$3 cfg=$4 events=$5 workers=$6 flags=${7:-}
    if [ ! -x "$bin" ]; then not_ok "$label: not built"; return; fi
    # exit 5: a malformed input line, reported as its outcome line; dry-run puts the line's
    # number before a malformed event's reason, the library reports the event as the engine
    # saw it, so that prefix is left out of the comparison
    "$DRY" dry-run "$bp" --config "$cfg" "$events" >"$TMP/want.lined" 2>"$TMP/want.err"
    dry_rc=$?
    sed -E 's/"reason":"line [0-9]+: malformed event/"reason":"malformed event/' "$TMP/want.lined" >"$TMP/want"
    if [ "$dry_rc" -ne 0 ] && [ "$dry_rc" -ne 5 ]; then
        not_ok "$label: dry-run failed (exit $dry_rc)" "$TMP/want.err"; return
    fi
    GORACE="halt_on_error=1 exitcode=66" timeout 300 "$bin" -workers "$workers" $flags "$bp" "$cfg" \
        <"$events" >"$TMP/got" 2>"$TMP/got.err"
    rc=$?
    lines=$(wc -l <"$TMP/want")
    if grep -q "WARNING: DATA RACE" "$TMP/got.err"; then
        not_ok "$label: race report" "$TMP/got.err"
    elif [ $rc -ne 0 ]; then
        not_ok "$label: exit status $rc" "$TMP/got.err"
    elif ! cmp -s "$TMP/got" "$TMP/want"; then
        diff "$TMP/want" "$TMP/got" >"$TMP/diff" 2>&1
        not_ok "$label: output differs from dry-run's (< dry-run, > embed-go)" "$TMP/diff"
    else
        ok "$label: same $lines lines as dry-run ($workers workers)"
    fi
}

for case_dir in "$REPO"/blueprints/*/tests/*/; do
    case_dir=${case_dir%/}
    cfg="$case_dir/config.yaml"
    [ -f "$cfg" ] || cfg="$case_dir/config.json"
    [ -f "$cfg" ] && [ -f "$case_dir/events.ndjson" ] || continue
    bp=${case_dir%/tests/*}
    name="$(basename "$bp")/$(basename "$case_dir")"
    if [ -f "$case_dir/answers.yaml" ]; then   # steps: answering them is the embedder's part
        ok "go: $name # SKIP its steps need answers; the example embedder does not answer steps"
        ok "go -race: $name # SKIP its steps need answers; the example embedder does not answer steps"
        continue
    fi
    run "$BIN" "go: $name" "$bp" "$cfg" "$case_dir/events.ndjson" 4
    run "$RACE" "go -race: $name" "$bp" "$cfg" "$case_dir/events.ndjson" 4
done

# A longer stream, so that workers really overlap and lines come back out of order.
AC="$REPO/blueprints/activecampaign"
ROWS="$AC/tests/all-rows"
if [ -f "$ROWS/events.ndjson" ]; then
    i=0; while [ $i -lt 100 ]; do cat "$ROWS/events.ndjson"; i=$((i + 1)); done >"$TMP/many.ndjson"
    run "$BIN" "go: activecampaign/all-rows x100" "$AC" "$ROWS/config.yaml" "$TMP/many.ndjson" 8
    run "$RACE" "go -race: activecampaign/all-rows x100" "$AC" "$ROWS/config.yaml" "$TMP/many.ndjson" 8

    # Slow mappings: every call outlives the watchdog's tick, so its signal
    # interrupts Lua on the goroutines' threads (needs SA_ONSTACK under Go).
    SLOW="$TMP/slow-activecampaign"
    cp -r "$AC" "$SLOW"
    changed=0
    for f in "$SLOW"/*.lua; do
        if grep -q '^return function(event, ctx)$' "$f"; then
            # 0.1 s of the process's CPU time: >= 25 ms of wall time with 4 workers on any number
            # of cores (the watchdog signals a call seen running at two looks 10 ms apart), a few
            # million VM instructions at most, and no allocation (slow under -race's malloc).
            sed -i 's/^return function(event, ctx)$/&\n  do local t0 = os.clock(); while os.clock() - t0 < 0.1 do end end/' "$f"
            changed=$((changed + 1))
        fi
    done
    if [ $changed -eq 0 ]; then
        not_ok "go: no mapping of the ActiveCampaign blueprint could be slowed down"
    else
        run "$BIN" "go: slow mappings (watchdog signals)" "$SLOW" "$ROWS/config.yaml" "$ROWS/events.ndjson" 4 -v
        if grep -q "handler with SA_ONSTACK" "$TMP/got.err"; then
            ok "go: the watchdog's handler in the Go process has SA_ONSTACK"
        else
            not_ok "go: the watchdog's handler in the Go process lacks SA_ONSTACK (or is missing)" "$TMP/got.err"
        fi
        run "$RACE" "go -race: slow mappings (watchdog signals)" "$SLOW" "$ROWS/config.yaml" "$ROWS/events.ndjson" 4
        run "$BIN" "go: slow mappings, -watchdog=false (count hook)" "$SLOW" "$ROWS/config.yaml" "$ROWS/events.ndjson" 4 \
            -watchdog=false
    fi
fi

exit $failed
