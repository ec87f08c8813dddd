#!/usr/bin/env bash
# scripts/test-embed.sh — the library as an embedder gets it (a suite of `make test`).
#
#   1. `make install` into a temporary prefix: the CLI (which loads
#      libblueprint-service for its service commands), libblueprint and
#      libblueprint-service (.so with their soname links, .a), the headers,
#      blueprint.pc, blueprint-service.pc and the default blueprints
#   2. nm -D: each shared library exports exactly the functions its header
#      marks BP_API (libblueprint.so also, as version BLUEPRINT_PRIVATE,
#      exactly the internals libblueprint-service.so takes from it); ldd:
#      the mapping library loads none of libcurl, SQLite, libmicrohttpd,
#      libcrypto, librdkafka
#   3. examples/embed-c built with `pkg-config --cflags --libs blueprint` only
#      (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig; no -I or -L into the repository),
#      shared and static, loading no network package; a service embedder
#      built with `pkg-config … blueprint-service`, shared and static; the
#      headers from C++
#   4. embed-c on every golden case (blueprints/*/tests/*/): its output equals
#      `build/blueprint dry-run` and expected.ndjson byte for byte
#   5. examples/embed-go/test.sh PREFIX when it exists (the Go embedder), its
#      TAP lines renumbered after these
#
# Prints TAP lines and the plan (1..N) last; exits 1 when any is "not ok".
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/test-embed.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT INT TERM
PREFIX="$TMP/prefix"

n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
# dry-run's lines without the input line number it puts before a malformed event's reason
unlined() { sed -E 's/"reason":"line [0-9]+: malformed event/"reason":"malformed event/'; }
not_ok() {   # not_ok DESCRIPTION [FILE whose start explains it]
  n=$((n + 1)); failed=1; echo "not ok $n - $1"
  if [ $# -gt 1 ] && [ -s "$2" ]; then head -c 3000 "$2" | sed 's/^/# /'; fi
  return 0
}
check() {    # check DESCRIPTION COMMAND… : ok when the command succeeds (its output explains a failure)
  local what=$1; shift
  if "$@" > "$TMP/check.log" 2>&1; then ok "$what"; else not_ok "$what" "$TMP/check.log"; fi
}

# Nothing may reach the repository's build tree through the environment.
unset CPATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH LIBRARY_PATH LD_LIBRARY_PATH PKG_CONFIG_LIBDIR 2>/dev/null
DRY="$REPO/build/blueprint"
[ -x "$DRY" ] || { not_ok "build/blueprint is missing (run make)"; echo "1..$n"; exit 1; }

# ---- 1. install -------------------------------------------------------------------------------------

if ! make -s --no-print-directory install PREFIX="$PREFIX" > "$TMP/install.log" 2>&1; then
  not_ok "make install PREFIX=… (temporary prefix)" "$TMP/install.log"
  echo "1..$n"; exit 1
fi
ok "make install PREFIX=… (temporary prefix)"

VERSION=$(sed -n 's/^#define BP_VERSION_[A-Z]* //p' include/blueprint.h | paste -sd.)
MAJOR=${VERSION%%.*}
LIBS="libblueprint libblueprint-service"
missing=""
for f in bin/blueprint include/blueprint.h include/blueprint_service.h lib/pkgconfig/blueprint.pc \
         lib/pkgconfig/blueprint-service.pc share/blueprint/blueprints/activecampaign/blueprint.yaml; do
  [ -f "$PREFIX/$f" ] || missing="$missing $f"
done
for lib in $LIBS; do
  for f in "lib/$lib.a" "lib/$lib.so.$VERSION"; do [ -f "$PREFIX/$f" ] || missing="$missing $f"; done
  [ "$(readlink "$PREFIX/lib/$lib.so")" = "$lib.so.$MAJOR" ] || missing="$missing lib/$lib.so→.so.$MAJOR"
  [ "$(readlink "$PREFIX/lib/$lib.so.$MAJOR")" = "$lib.so.$VERSION" ] || missing="$missing lib/$lib.so.$MAJOR→.so.$VERSION"
done
[ -e "$PREFIX/bin/blueprint-net" ] && missing="$missing (bin/blueprint-net should be gone)"
if [ -z "$missing" ]; then
  ok "installed: CLI, libblueprint and libblueprint-service .so.$VERSION (+ links) and .a, headers, .pc files, blueprints"
else not_ok "installed files missing:$missing"; fi

for lib in $LIBS; do
  soname=$(readelf -d "$PREFIX/lib/$lib.so.$VERSION" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  if [ "$soname" = "$lib.so.$MAJOR" ]; then ok "soname of $lib is $lib.so.$MAJOR"
  else not_ok "soname of $lib is '$soname', not $lib.so.$MAJOR"; fi
done

# The CLI loads libblueprint-service from PREFIX/lib (token is a service command).
if "$PREFIX/bin/blueprint" token --role viewer --state "$TMP/state" > "$TMP/net.log" 2>&1 &&
   grep -qE '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' "$TMP/net.log"; then
  ok "installed blueprint loads libblueprint-service for its service commands (blueprint token)"
else not_ok "installed blueprint loads libblueprint-service for its service commands (blueprint token)" "$TMP/net.log"; fi
# ... and none of it for dry-run and test
if ldd "$PREFIX/bin/blueprint" | grep -qE 'libblueprint|libcurl|libsqlite3|libmicrohttpd|librdkafka|libcrypto'; then
  ldd "$PREFIX/bin/blueprint" > "$TMP/ldd.log" 2>&1; not_ok "the installed CLI links no network package" "$TMP/ldd.log"
else ok "the installed CLI links no network package (they come with libblueprint-service, for the service commands)"; fi

for bp in "$PREFIX"/share/blueprint/blueprints/*/; do
  [ -d "$bp/tests" ] || continue
  check "installed blueprint test share/blueprint/blueprints/$(basename "$bp")" "$PREFIX/bin/blueprint" test "$bp"
done

# ---- 2. exported symbols ------------------------------------------------------------------------------

# declared FILE…: the functions the headers mark BP_API
declared() { sed -n 's/^BP_API[^(]*[ *]\([A-Za-z_][A-Za-z_0-9]*\)(.*/\1/p' "$@" | sort -u; }
# exported LIB [VERSION]: what LIB exports (at that symbol version; without one, the unversioned ones)
exported() {
  nm -D --defined-only "$1" | awk '{print $NF}' | grep -v '^BLUEPRINT' |
    if [ $# -gt 1 ]; then sed -n "s/@@*$2\$//p"; else grep -v '@'; fi | sort -u
}
same_list() {   # same_list DESCRIPTION WANTED GOT
  if cmp -s "$2" "$3"; then ok "$1 ($(wc -l < "$2") functions)"
  else diff "$2" "$3" | sed -n 's/^> /exported, not wanted: /p; s/^< /wanted, not exported: /p' > "$TMP/nm.log"
       not_ok "$1" "$TMP/nm.log"; fi
}
CORE_SO="$PREFIX/lib/libblueprint.so" SERVICE_SO="$PREFIX/lib/libblueprint-service.so"
declared "$PREFIX/include/blueprint.h" > "$TMP/declared"
exported "$CORE_SO" BLUEPRINT > "$TMP/exported"
same_list "nm -D: libblueprint.so exports, as version BLUEPRINT, exactly the BP_API functions of blueprint.h" \
  "$TMP/declared" "$TMP/exported"
nm -D --undefined-only "$SERVICE_SO" | sed -n 's/.* \([A-Za-z_0-9]*\)@BLUEPRINT_PRIVATE$/\1/p' | sort -u > "$TMP/taken"
exported "$CORE_SO" BLUEPRINT_PRIVATE > "$TMP/private"
same_list "nm -D: libblueprint.so's BLUEPRINT_PRIVATE symbols are exactly those libblueprint-service.so takes" \
  "$TMP/taken" "$TMP/private"
if grep -qxf "$TMP/private" "$TMP/declared"; then not_ok "a BLUEPRINT_PRIVATE symbol is declared in blueprint.h"
else ok "no BLUEPRINT_PRIVATE symbol is declared in an installed header"; fi
exported "$CORE_SO" > "$TMP/unversioned"
if [ -s "$TMP/unversioned" ]; then not_ok "libblueprint.so exports unversioned symbols" "$TMP/unversioned"
else ok "libblueprint.so exports nothing else"; fi
declared "$PREFIX/include/blueprint_service.h" > "$TMP/declared-service"
nm -D --defined-only "$SERVICE_SO" | awk '{print $NF}' | sed 's/@.*//' | sort -u > "$TMP/exported-service"
same_list "nm -D: libblueprint-service.so exports exactly the BP_API functions of blueprint_service.h" \
  "$TMP/declared-service" "$TMP/exported-service"
cat "$TMP/exported" "$TMP/private" "$TMP/exported-service" > "$TMP/all-exported"
if grep -v '^bp_' "$TMP/all-exported" > "$TMP/nonbp.log"; then not_ok "nm -D: only bp_ symbols" "$TMP/nonbp.log"
else ok "nm -D: only bp_ symbols (no Lua, no internals such as bp_store_*, bp_hmac_sha256)"; fi

# ldd: the mapping library (the build's and the installed one) loads no network package, directly or not.
NETWORK='libcurl|libsqlite3|libmicrohttpd|librdkafka|libcrypto|libssl'
for so in "$REPO/build/libblueprint.so" "$CORE_SO"; do
  ldd "$so" > "$TMP/ldd.log" 2>&1
  name=${so#"$REPO"/}; name=${name#"$TMP"/}
  if grep -qE "$NETWORK" "$TMP/ldd.log"; then not_ok "ldd $name: a network package" "$TMP/ldd.log"
  else ok "ldd $name: $(awk '{print $1}' "$TMP/ldd.log" | grep -v linux-vdso | tr '\n' ' ')"; fi
done
if LD_LIBRARY_PATH="$PREFIX/lib" ldd "$SERVICE_SO" | grep -q "libblueprint.so.$MAJOR => $PREFIX/lib/"; then
  ok "libblueprint-service.so links libblueprint.so.$MAJOR"
else LD_LIBRARY_PATH="$PREFIX/lib" ldd "$SERVICE_SO" > "$TMP/ldd.log" 2>&1
     not_ok "libblueprint-service.so links libblueprint.so.$MAJOR" "$TMP/ldd.log"; fi

# ---- 3. build embedders with pkg-config only -----------------------------------------------------------

export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
pcver=$(pkg-config --modversion blueprint 2>&1)
if [ "$pcver" = "$VERSION" ]; then ok "pkg-config --modversion blueprint = $VERSION"
else not_ok "pkg-config --modversion blueprint: '$pcver', not $VERSION"; fi
flags=$(pkg-config --cflags --libs blueprint 2>&1)
case "$flags" in
  *"$REPO"*) not_ok "pkg-config --cflags --libs blueprint points into the repository: $flags" ;;
  *"-I$PREFIX/include"*"-L$PREFIX/lib"*) ok "pkg-config --cflags --libs blueprint: $flags" ;;
  *) not_ok "pkg-config --cflags --libs blueprint: $flags" ;;
esac

EMBED="$TMP/embed-c"
check "examples/embed-c builds with pkg-config only (make -C examples/embed-c)" \
  make -s --no-print-directory -C examples/embed-c OUT="$EMBED"
if LD_LIBRARY_PATH="$PREFIX/lib" ldd "$EMBED" 2>&1 | grep -q "libblueprint.so.$MAJOR => $PREFIX/lib/"; then
  ok "embed-c loads libblueprint.so.$MAJOR from the prefix"
else LD_LIBRARY_PATH="$PREFIX/lib" ldd "$EMBED" > "$TMP/ldd.log" 2>&1; not_ok "embed-c loads libblueprint.so.$MAJOR from the prefix" "$TMP/ldd.log"; fi

if LD_LIBRARY_PATH="$PREFIX/lib" ldd "$EMBED" 2>&1 | grep -qE "libblueprint-service|$NETWORK"; then
  LD_LIBRARY_PATH="$PREFIX/lib" ldd "$EMBED" > "$TMP/ldd.log" 2>&1; not_ok "embed-c loads no network package" "$TMP/ldd.log"
else ok "embed-c (blueprint.h only) loads no network package and not libblueprint-service"; fi

# Static: libblueprint.a plus what `pkg-config --static` adds (Requires.private, Libs.private).
STATIC="$TMP/embed-c-static"
# shellcheck disable=SC2046
check "examples/embed-c links libblueprint.a with pkg-config --static --libs" \
  cc -std=c11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags blueprint) -o "$STATIC" examples/embed-c/main.c \
    "$PREFIX/lib/libblueprint.a" $(pkg-config --static --libs blueprint | sed 's/-lblueprint\b//')

# A service embedder: blueprint_service.h with pkg-config blueprint-service (which brings blueprint).
pcver=$(pkg-config --modversion blueprint-service 2>&1)
if [ "$pcver" = "$VERSION" ]; then ok "pkg-config --modversion blueprint-service = $VERSION"
else not_ok "pkg-config --modversion blueprint-service: '$pcver', not $VERSION"; fi
cat > "$TMP/service.c" <<'EOF'
#include <blueprint_service.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
    bp_error err;
    bp_blueprint *bp = argc > 1 ? bp_blueprint_load(argv[1], &err) : NULL;   /* libblueprint */
    if (!bp) { fprintf(stderr, "%s\n", argc > 1 ? err.msg : "usage: service BLUEPRINT_DIR"); return 2; }
    bp_deliver_opts o;
    bp_deliver_opts_default(&o);                                            /* libblueprint-service */
    bp_deliver_stats st;
    memset(&st, 0, sizeof st);
    st.latency_us[10] = 1;
    printf("%s %d %.1f %s\n", bp->name, o.concurrency, bp_deliver_latency_ms(&st, 0.5), bp_version());
    bp_blueprint_free(bp);
    return 0;
}
EOF
# shellcheck disable=SC2046
if cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags blueprint-service) -o "$TMP/service" "$TMP/service.c" \
     $(pkg-config --libs blueprint-service) > "$TMP/service.log" 2>&1 &&
   LD_LIBRARY_PATH="$PREFIX/lib" "$TMP/service" blueprints/activecampaign >> "$TMP/service.log" 2>&1 &&
   grep -q " $VERSION\$" "$TMP/service.log"; then
  ok "a service embedder builds with pkg-config --cflags --libs blueprint-service and runs"
else not_ok "a service embedder builds with pkg-config --cflags --libs blueprint-service and runs" "$TMP/service.log"; fi
# shellcheck disable=SC2046
if cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags blueprint-service) -o "$TMP/service-static" "$TMP/service.c" \
     "$PREFIX/lib/libblueprint-service.a" "$PREFIX/lib/libblueprint.a" \
     $(pkg-config --static --libs blueprint-service | sed 's/-lblueprint\(-service\)\?\b//g') > "$TMP/service.log" 2>&1 &&
   "$TMP/service-static" blueprints/activecampaign >> "$TMP/service.log" 2>&1; then
  ok "the service embedder links libblueprint-service.a and libblueprint.a with pkg-config --static --libs"
else not_ok "the service embedder links libblueprint-service.a and libblueprint.a with pkg-config --static --libs" \
       "$TMP/service.log"; fi

# The headers from C++ (extern "C") and bp_version() against BP_VERSION_*.
cat > "$TMP/version.cpp" <<'EOF'
#include <blueprint.h>
#include <blueprint_service.h>
#include <cstdio>
#include <cstring>
#define S2(x) #x
#define S(x) S2(x)
int main() {
    const char *want = S(BP_VERSION_MAJOR) "." S(BP_VERSION_MINOR) "." S(BP_VERSION_PATCH);
    bp_deliver_opts o;
    bp_deliver_opts_default(&o);
    std::printf("%s\n", bp_version());
    return std::strcmp(bp_version(), want) != 0;
}
EOF
# shellcheck disable=SC2046
if c++ -Wall -Wextra -Werror $(pkg-config --cflags blueprint-service) -o "$TMP/version" "$TMP/version.cpp" \
     $(pkg-config --libs blueprint-service) > "$TMP/cxx.log" 2>&1 &&
   LD_LIBRARY_PATH="$PREFIX/lib" "$TMP/version" >> "$TMP/cxx.log" 2>&1; then
  ok "the headers compile as C++ (extern \"C\") and bp_version() = $VERSION"
else not_ok "the headers compile as C++ (extern \"C\") and bp_version() = $VERSION" "$TMP/cxx.log"; fi

# ---- 4. the golden cases -----------------------------------------------------------------------------

cases=0
for dir in blueprints/*/tests/*/; do
  dir=${dir%/}
  [ -f "$dir/events.ndjson" ] || continue
  cfg="$dir/config.yaml"; [ -f "$cfg" ] || cfg="$dir/config.json"
  [ -f "$cfg" ] || continue
  bp=${dir%/tests/*}
  name="${bp#blueprints/}/${dir##*/}"
  cases=$((cases + 1))
  # A case with its own answers.yaml has steps (ctx.send): answering them is
  # the embedder's part (bp_engine_set_answerer, or sending them), which the
  # example embedder does not do.
  if [ -f "$dir/answers.yaml" ]; then
    for what in "embed-c = dry-run" "embed-c = expected.ndjson" "embed-c (static) = dry-run"; do
      ok "$what on $name # SKIP its steps need answers; the example embedder does not answer steps"
    done
    continue
  fi
  # dry-run exits 5 when an input line is malformed (reported as its outcome line), and puts
  # the line's number before a malformed event's reason: the library reports the event as
  # the engine saw it (the reader's own errors carry their line in both), so that prefix is
  # left out of the comparison.
  "$DRY" dry-run "$bp" --config "$cfg" "$dir/events.ndjson" 2> "$TMP/dry.err" | unlined > "$TMP/dry.out"
  dry_rc=${PIPESTATUS[0]}
  [ $dry_rc -eq 5 ] && dry_rc=0
  LD_LIBRARY_PATH="$PREFIX/lib" "$EMBED" "$bp" "$cfg" < "$dir/events.ndjson" > "$TMP/embed.out" 2> "$TMP/embed.err"
  embed_rc=$?
  "$STATIC" "$bp" "$cfg" < "$dir/events.ndjson" > "$TMP/static.out" 2> "$TMP/static.err"
  events=$(wc -l < "$TMP/dry.out")
  if [ $dry_rc -ne 0 ] || [ $embed_rc -ne 0 ]; then
    cat "$TMP/dry.err" "$TMP/embed.err" > "$TMP/rc.log"
    not_ok "embed-c = dry-run on $name (dry-run exit $dry_rc, embed-c exit $embed_rc)" "$TMP/rc.log"
  elif cmp -s "$TMP/dry.out" "$TMP/embed.out"; then
    ok "embed-c = dry-run on $name ($events outcome lines, byte for byte)"
  else
    diff "$TMP/dry.out" "$TMP/embed.out" > "$TMP/diff.log"
    not_ok "embed-c = dry-run on $name" "$TMP/diff.log"
  fi
  if [ ! -f "$dir/expected.ndjson" ]; then ok "embed-c = expected.ndjson on $name # SKIP no expected.ndjson"
  elif [ -s "$dir/dry-run.args" ]; then
    ok "embed-c = expected.ndjson on $name # SKIP expected.ndjson is dry-run $(tr '\n' ' ' < "$dir/dry-run.args")(a batch); the example embedder maps one event at a time"
  elif unlined < "$dir/expected.ndjson" | cmp -s - "$TMP/embed.out"; then ok "embed-c = expected.ndjson on $name"
  else unlined < "$dir/expected.ndjson" | diff - "$TMP/embed.out" > "$TMP/diff.log"; not_ok "embed-c = expected.ndjson on $name" "$TMP/diff.log"; fi
  if cmp -s "$TMP/dry.out" "$TMP/static.out"; then ok "embed-c (static) = dry-run on $name"
  else diff "$TMP/dry.out" "$TMP/static.out" > "$TMP/diff.log"; cat "$TMP/static.err" >> "$TMP/diff.log"
       not_ok "embed-c (static) = dry-run on $name" "$TMP/diff.log"; fi
done
[ $cases -gt 0 ] || not_ok "no golden cases found in blueprints/*/tests/*/"

# ---- 5. the Go embedder ---------------------------------------------------------------------------------
# HOOK: examples/embed-go/test.sh PREFIX (written with the Go example) prints its own TAP lines
# numbered from 1 and no plan; they are renumbered after the ones above, and the plan covers all.
if [ -x examples/embed-go/test.sh ]; then
  examples/embed-go/test.sh "$PREFIX" > "$TMP/go.log" 2>&1
  go_rc=$?
  while IFS= read -r line; do
    case "$line" in
      "ok "[0-9]*) n=$((n + 1)); echo "ok $n $(sed -E 's/^ok [0-9]+ ?//' <<< "$line")" ;;
      "not ok "[0-9]*) n=$((n + 1)); failed=1; echo "not ok $n $(sed -E 's/^not ok [0-9]+ ?//' <<< "$line")" ;;
      1..*) ;;
      *) echo "$line" ;;
    esac
  done < "$TMP/go.log"
  if [ $go_rc -ne 0 ] && [ $failed -eq 0 ]; then not_ok "examples/embed-go/test.sh exited $go_rc" "$TMP/go.log"; fi
else
  echo "# examples/embed-go/test.sh not there: the Go embedder is not tested"
fi

echo "1..$n"
[ $failed -eq 0 ]
