#!/usr/bin/env bash
# Regenerate tests/golden/CASE/expected.ndjson from the current dry-run output.
# Review the diff (git diff tests/golden) before committing: the expected file
# is the contract the specs hold the blueprint to.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/golden-update.sh CASE [CASE…]" >&2; exit 1; }
make -s build/blueprint
for c in "$@"; do
  d="tests/golden/$c"
  bp=blueprints/activecampaign
  [ -f "$d/blueprint" ] && bp=$(cat "$d/blueprint")
  build/blueprint dry-run "$bp" --config "$d/config.yaml" "$d/events.ndjson" > "$d/expected.ndjson"
  echo "wrote $d/expected.ndjson ($(wc -l < "$d/expected.ndjson") lines)"
done
