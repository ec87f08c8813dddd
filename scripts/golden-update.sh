#!/usr/bin/env bash
# Rewrite the expected output of a blueprint's fixtures from today's dry-run
# output, showing the differences first:
#   scripts/golden-update.sh [BLUEPRINT_DIR] [CASE…]   (default blueprints/activecampaign, every case)
# The same as `build/blueprint test BLUEPRINT_DIR --update [--case CASE…]`.
# Review with `git diff` before committing: expected.ndjson is the contract.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build/blueprint
dir=blueprints/activecampaign
if [ $# -ge 1 ] && [ -d "$1" ]; then dir=$1; shift; fi
cases=()
for c in "$@"; do cases+=(--case "$c"); done
exec build/blueprint test "$dir" --update "${cases[@]}"
