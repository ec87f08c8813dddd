-- Crash injection for the single-node store: `serve` is killed with
-- SIGKILL at 20 seeded moments (before, during and after its commits) while
-- events are posted and delivered, and restarted on the same state each
-- time.  Every event acknowledged with 202 must be delivered in the end;
-- duplicates stay within the documented bound (per kill: the requests in
-- flight plus those answered in the last 10 ms).  Tagged #serve.
local S = require("support")
local core = S.core

describe("crash injection #serve", function()
  it("delivers every acknowledged event across 20 kills at seeded moments", function()
    local emu = S.start_emulator("--rate-limit 0")
    local state = S.tmpdir()
    -- one by one (--no-batch): this is the store's promise per event; batches' kills are batch_kill_spec's
    local srv = S.start_server({ state = state, rate = 300, args = "--no-batch" })
    local port = srv.port
    local token = srv.token("admin", "2h")
    local _, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install", core.json_encode({
      name = "crashy", config = { api_url = emu.url, api_key = S.EMU_TOKEN } }))
    -- a poster in the background: batches of 5 events, each batch's status logged
    local acks, stop = os.tmpname(), os.tmpname()
    os.remove(stop)
    local script = os.tmpname()
    S.write(script, ([[
n=0
while [ ! -e %s ]; do
  n=$((n + 1))
  body=""
  for k in 1 2 3 4 5; do
    body="$body{\"type\":\"identify\",\"messageId\":\"c$n-$k\",\"traits\":{\"email\":\"c$n-$k@example.com\"},\"context\":{\"consent\":{\"marketing\":true}}}
"
  done
  code=$(printf '%%s' "$body" | curl -s -m 5 -o /dev/null -w '%%{http_code}' -X POST -H 'Authorization: Bearer %s' \
    --data-binary @- http://127.0.0.1:%s/v1/integrations/%s/events)
  echo "$n $code" >> %s
  sleep 0.01
done
]]):format(stop, token, port, it.id, acks))
    os.execute("bash " .. script .. " > /dev/null 2>&1 &")
    finally(function() S.write(stop, ""); srv.stop(); emu.stop(); os.remove(script) end)   -- srv: the latest

    math.randomseed(14)
    for kill = 1, 20 do
      S.sleep(0.05 + math.random() * 0.4)   -- a moment somewhere in the commits' 10 ms rhythm
      srv.kill()
      S.sleep(0.05)
      srv = S.start_server({ state = state, rate = 300, port = port, args = "--no-batch" })
    end
    S.write(stop, "")
    S.sleep(0.3)

    local acked, batches = {}, 0
    for line in io.lines(acks) do
      local n, code = line:match("(%d+) (%d+)")
      if code == "202" then
        batches = batches + 1
        for k = 1, 5 do acked[#acked + 1] = ("c%s-%d@example.com"):format(n, k) end
      end
    end
    assert.is_true(batches >= 20, "only " .. batches .. " batches were acknowledged")
    local seen
    local all = S.eventually(function()
      seen = {}
      for _, r in ipairs(emu.requests()) do
        if r.status == 200 or r.status == 201 then
          local email = r.body:match('"email":"([^"]+)"')
          if email then seen[email] = (seen[email] or 0) + 1 end
        end
      end
      for _, email in ipairs(acked) do if not seen[email] then return false end end
      return true
    end, 30)
    local missing = {}
    for _, email in ipairs(acked) do if not seen[email] then missing[#missing + 1] = email end end
    assert.is_truthy(all, #missing .. " acknowledged events never delivered, e.g. " .. tostring(missing[1]))
    local dups = 0
    for _, n in pairs(seen) do if n > 1 then dups = dups + n - 1 end end
    -- bound per kill: 8 in flight (concurrency) plus those answered in the last 10 ms (≤ 3 at 300/s)
    print(("# %d batches acknowledged (%d events), %d duplicate deliveries"):format(batches, #acked, dups))
    assert.is_true(dups <= 20 * (8 + 3), dups .. " duplicate deliveries")
    os.remove(acks)
  end)
end)
