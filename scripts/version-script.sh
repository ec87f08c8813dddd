#!/bin/sh
# scripts/version-script.sh HEADER CORE_OBJECTS… -- SERVICE_OBJECTS…
#
# Prints the linker version script of the mapping library (libblueprint.so):
# version BLUEPRINT exports the functions HEADER marks BP_API, and
# BLUEPRINT_PRIVATE the internal functions the service library's objects
# call in the core's objects (computed with nm, so it follows the code);
# every other symbol stays local.  No installed header declares the private
# ones: they are there for libblueprint-service.so, which links this
# library, so that a process has one copy of the core (one log callback,
# one watchdog) whether it maps events only or runs the service too.
set -eu
header=$1; shift
core="" service="" seen=0
for f in "$@"; do
  if [ "$f" = "--" ]; then seen=1; elif [ $seen = 0 ]; then core="$core $f"; else service="$service $f"; fi
done
export LC_ALL=C
tmp=$(mktemp -d "${TMPDIR:-/tmp}/version-script.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
sed -n 's/^BP_API[^(]*[ *]\([A-Za-z_][A-Za-z_0-9]*\)(.*/\1/p' "$header" | sort -u > "$tmp/api"
# shellcheck disable=SC2086
nm --defined-only $core | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort -u > "$tmp/defined"
# shellcheck disable=SC2086
nm --undefined-only $service | awk '$1 == "U" {print $2}' | sort -u > "$tmp/needed"
comm -12 "$tmp/defined" "$tmp/needed" | comm -23 - "$tmp/api" > "$tmp/private"
echo "BLUEPRINT {"
echo "  global:"
sed 's/.*/    &;/' "$tmp/api"
echo "  local: *;"
echo "};"
echo "BLUEPRINT_PRIVATE {"
echo "  global:"
sed 's/.*/    &;/' "$tmp/private"
echo "} BLUEPRINT;"
