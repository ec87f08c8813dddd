#!/usr/bin/env bash
# `make run`: start `blueprint serve` on 127.0.0.1:8084 (or PORT) with its
# state in ./var (or STATE) and, unless BLUEPRINT_ACCOUNT=real, the local
# ActiveCampaign emulator as the account to deliver to (on 127.0.0.1:8085, or
# EMU_PORT, fixed so that an installed integration still reaches it after a
# restart).  Prints the web console's sign-in link, the values its install
# form needs, an admin token and the curl commands of the README's setup
# (install, send, verify in Live Events), each pasteable as printed (the install
# command sets ID for the next ones).  Ctrl-C stops both.
#   PORT=9084 EMU_PORT=9085 make run   # when 8084 or 8085 is taken
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8084}
STATE=${STATE:-var}
mkdir -p "$STATE"

emu_pid=""
cleanup() {
  [ -n "${srv_pid:-}" ] && kill -TERM "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  [ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null
  true
}
trap cleanup EXIT INT TERM

if [ "${BLUEPRINT_ACCOUNT:-}" = real ]; then
  API_URL='https://YOUR-ACCOUNT.api-us1.com'; API_KEY='YOUR-API-KEY'
  ACTID='YOUR-ACTID'; EVENT_KEY='YOUR-EVENT-KEY'; TRACK_URL='https://trackcmp.net/event'
  echo "== using a real ActiveCampaign account: fill in the placeholders below"
else
  log="$STATE/emulator.log"
  EMU_PORT=${EMU_PORT:-8085}
  build/ac-emulator --port "$EMU_PORT" > "$log" 2>&1 &
  emu_pid=$!
  for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.05; done
  EMU=$(sed -n 's/^listening on //p' "$log")
  if [ -z "$EMU" ]; then
    echo "the emulator did not start on port $EMU_PORT (taken? EMU_PORT=9085 make run picks another):"; cat "$log"; exit 1
  fi
  API_URL=$EMU; API_KEY=emulator-api-token; ACTID=1000001; EVENT_KEY=emulator-event-key; TRACK_URL=$EMU/event
  echo "== no ActiveCampaign account configured: the local emulator at $EMU plays the account"
  echo "   (BLUEPRINT_ACCOUNT=real make run prints the commands for a real account instead)"
fi

build/blueprint serve --listen "127.0.0.1:$PORT" --state "$STATE" --blueprints blueprints \
  > "$STATE/serve.out" 2> "$STATE/serve.log" &
srv_pid=$!
for _ in $(seq 100); do grep -q listening "$STATE/serve.out" 2>/dev/null && break; sleep 0.05; done
if ! grep -q listening "$STATE/serve.out" 2>/dev/null; then
  echo "blueprint serve did not start on port $PORT (taken? PORT=9084 make run picks another):"; cat "$STATE/serve.log"; exit 1
fi
TOKEN=$(build/blueprint token --role admin --ttl 12h --state "$STATE")
# the console's link carries a sign-in token in the fragment (never sent to a
# server, never logged), good once within 15 minutes
SIGNIN=$(build/blueprint token --role admin --ttl 15m --sign-in --state "$STATE")
BASE=$(sed -n 's/^listening on //p' "$STATE/serve.out")   # PORT=0: a free port, as printed by serve

cat <<MSG
== blueprint serve is listening on $BASE (state in $STATE/, JSON logs in $STATE/serve.log)

The web console (open within 15 minutes; the link works once):
  $BASE/#signin=$SIGNIN
  (another: build/blueprint token --role admin --sign-in --state $STATE)

The console's install form (Integrations > Integration Library > ActiveCampaign > Install):
  Name                                 ActiveCampaign
  API URL                              $API_URL
  API Key                              $API_KEY
  Event Tracking account ID (actid)    $ACTID
  Event Tracking key                   $EVENT_KEY
  Event Tracking endpoint              $TRACK_URL

Or with curl, pasted into bash as printed.  An admin token (12 h):
  export TOKEN=$TOKEN

1. Install ActiveCampaign (prints the answer and sets ID from it):
  ID=\$(curl -s -X POST $BASE/v1/admin/integration-catalog/activecampaign/install \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"name":"ActiveCampaign","variant":"default","config":{"api_url":"$API_URL","api_key":"$API_KEY","event_tracking_account_id":"$ACTID","event_tracking_key":"$EVENT_KEY","event_tracking_url":"$TRACK_URL"},"delivery_mode":"server_side"}' \\
    | tee /dev/stderr | sed -n 's/^{"id":"\([^"]*\)".*/\1/p'); echo; echo "ID=\$ID"

2. Send a test event:
  curl -s -X POST $BASE/v1/integrations/\$ID/events -H "Authorization: Bearer \$TOKEN" \\
    -d '{"type":"identify","messageId":"test-1","traits":{"email":"test@example.com","first_name":"Test"},"context":{"consent":{"marketing":true}}}'
   or the example events (all accepted; sent again, all duplicates):
  curl -s -X POST $BASE/v1/integrations/\$ID/events -H "Authorization: Bearer \$TOKEN" \\
    --data-binary @blueprints/activecampaign/examples/events.ndjson

3. Verify it's working — Live Events (status 200/201 = delivered):
  curl -s "$BASE/v1/admin/integrations/\$ID/live-events?limit=10" -H "Authorization: Bearer \$TOKEN"
  curl -N "$BASE/v1/admin/integrations/\$ID/live-events/stream" -H "Authorization: Bearer \$TOKEN"

Also: GET $BASE/healthz, GET $BASE/metrics. Ctrl-C stops the server (pending events stay in $STATE/).
Ports: PORT=$PORT (the API and console) and EMU_PORT=${EMU_PORT:-none} (the emulator); e.g. PORT=9084 EMU_PORT=9085 make run.
MSG
wait "$srv_pid"
