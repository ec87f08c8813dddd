-- `make bench` (BENCH_ONLY=batch): a backlog of identifies drained through
-- ActiveCampaign's bulk import (issue 24), and a live identify's latency
-- with batches on and off.
--
--   lua5.4 scripts/bench/batch.lua WORKDIR EVENTS SAMPLE LIVE
--
-- Drain: the emulator at the account's real limits (--rate-limit 5,
-- --imports-per-minute 100, --import-delay-ms 2000); `deliver --batch` of
-- EVENTS identify events of one account, each a new contact with consent
-- granted (lists [1, 2]), 2 tags and 3 custom fields.  deliver stores the
-- file, then delivers it, and exits once every event has its outcome: its
-- wall time is the drain (and its peak RSS, /usr/bin/time).  Every request the emulator received is counted
-- (/_emulator/stats: imports, status requests, field and tag lookups,
-- contact syncs), and by path and status from its request log; its 429s
-- are split into the 5/s limit's (stats' rate_limited) and the rest (the
-- imports a minute).
--
-- One by one: `deliver --no-batch` of SAMPLE such identifies (emulator
-- limit off, so it takes seconds: requests per contact do not depend on the
-- pace); the time for EVENTS is extrapolated at the pacer's 4.85 requests/s.
--
-- Live: one `serve` (the blueprint's own 5/s pace) with and without
-- --batch, the depth integration installed, one warm-up identify, then LIVE
-- identifies posted one at a time, each timed from its POST until
-- /metrics counts it delivered.  Prints key=value lines.
local W, N, SAMPLE, LIVE = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local core = require("blueprint_core")

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end
local function write(path, text) local f = assert(io.open(path, "wb")); f:write(text); f:close() end
local function sleep(s) os.execute("sleep " .. s) end
local function now_ms() return tonumber(sh("date +%s%3N")) end

local function start(cmd, out)
  local pid = sh(cmd .. " > " .. out .. " 2>" .. out .. ".err & echo $!"):match("%d+")
  for _ = 1, 200 do
    local port = sh("cat " .. out):match("listening on http://127%.0%.0%.1:(%d+)")
    if port then return pid, port end
    sleep(0.05)
  end
  error("did not start: " .. cmd)
end

local DEPTH = { lists = { 1, 2 }, tags = true,
  custom_fields = { birthday = "BIRTHDAY", plan = "Plan", interests = "Interests" } }

local function identify(tag, i)
  return core.json_encode({ type = "identify", messageId = tag .. i, traits = {
    email = tag .. i .. "@example.com", first_name = "Ada", last_name = "Lovelace", tags = { "vip", "newsletter" },
    birthday = "1990-05-17", plan = "Pro", interests = { "Shoes", "Hats" } },
    context = { consent = { marketing = true } } })
end
local function corpus(path, tag, n)
  local f = assert(io.open(path, "wb"))
  for i = 1, n do f:write(identify(tag, i), "\n") end
  f:close()
end

local function config(path, port)
  write(path, ("api_url: http://127.0.0.1:%d\napi_key: emulator-api-token\nlists: [1, 2]\ntags: true\n"
    .. "custom_fields: {birthday: BIRTHDAY, plan: Plan, interests: Interests}\n"):format(port))
end

-- the emulator's request log, counted by path and by status
local function log_counts(port)
  local log = sh("curl -s http://127.0.0.1:" .. port .. "/_emulator/requests")
  local paths, statuses, total = {}, {}, 0
  for path in log:gmatch('"path":"([^"]+)","api_token"') do paths[path] = (paths[path] or 0) + 1; total = total + 1 end
  for status in log:gmatch('"status":(%d+),"at_ms"') do statuses[status] = (statuses[status] or 0) + 1 end
  return paths, statuses, total
end
local function stats(port) return core.json_decode(sh("curl -s http://127.0.0.1:" .. port .. "/_emulator/stats")) end

local pids = {}
local ok, err = pcall(function()
  -- ---- one by one: requests per contact on a sample ----
  local pid, port = start("build/ac-emulator --port 0 --rate-limit 0", W .. "/b-emu1.out")
  pids[#pids + 1] = pid
  config(W .. "/b-one.yaml", port)
  corpus(W .. "/b-one.ndjson", "o", SAMPLE)
  os.execute("rm -rf " .. W .. "/b-one-state")
  sh("build/blueprint deliver blueprints/activecampaign --no-batch --config " .. W .. "/b-one.yaml --state " .. W
    .. "/b-one-state --rate-limit 1000000 " .. W .. "/b-one.ndjson > " .. W .. "/b-one.out 2>" .. W .. "/b-one.err")
  local one_delivered = select(2, sh("cat " .. W .. "/b-one.out"):gsub('"outcome":"delivered"', ""))
  local one_rpc = stats(port).requests / SAMPLE
  os.execute("kill " .. pid)
  print(("sample=%d sample_delivered=%d one_rpc=%.2f one_est_s=%.0f"):format(SAMPLE, one_delivered, one_rpc,
    N * one_rpc / (5 * 0.97)))

  -- ---- the backlog, in batches, at the account's real limits ----
  pid, port = start("build/ac-emulator --port 0 --rate-limit 5 --imports-per-minute 100 --import-delay-ms 2000",
    W .. "/b-emu2.out")
  pids[#pids + 1] = pid
  config(W .. "/b-drain.yaml", port)
  corpus(W .. "/b-drain.ndjson", "b", N)
  os.execute("rm -rf " .. W .. "/b-drain-state")
  local t0 = now_ms()
  sh("/usr/bin/time -f %M -o " .. W .. "/b-drain.rss build/blueprint deliver blueprints/activecampaign --batch --config "
    .. W .. "/b-drain.yaml --state " .. W .. "/b-drain-state " .. W .. "/b-drain.ndjson > " .. W .. "/b-drain.out 2>"
    .. W .. "/b-drain.err")
  local drain_s = (now_ms() - t0) / 1000
  local rss_mb = (tonumber(sh("tail -1 " .. W .. "/b-drain.rss"):match("%d+")) or 0) / 1024
  local out = sh("cat " .. W .. "/b-drain.out")
  local delivered = select(2, out:gsub('"outcome":"delivered"', ""))
  local batched = select(2, out:gsub('"reason":"delivered in batch', ""))
  local st = stats(port)
  local paths, statuses, logged = log_counts(port)
  local lookups = (paths["/api/3/fields"] or 0) + (paths["/api/3/tags"] or 0)
  print(("events=%d drain_s=%.1f delivered=%d batched=%d requests=%d logged=%d rpc=%.4f imports=%d polls=%d "
    .. "lookups=%d syncs=%d other=%d r429_minute=%d r429_second=%d contacts=%d rss_mb=%.1f"):format(N, drain_s, delivered,
    batched,
    st.requests, logged,
    st.requests / N, paths["/api/3/import/bulk_import"] or 0, paths["/api/3/import/info"] or 0, lookups,
    paths["/api/3/contact/sync"] or 0,
    logged - (paths["/api/3/import/bulk_import"] or 0) - (paths["/api/3/import/info"] or 0) - lookups
      - (paths["/api/3/contact/sync"] or 0), (statuses["429"] or 0) - st.rate_limited, st.rate_limited, st.contacts,
    rss_mb))

  -- ---- a live identify with nothing queued, batches on and off ----
  local function live(batch)
    os.execute("rm -rf " .. W .. "/b-live-state")
    local srv, sport = start("build/blueprint serve --port 0 --state " .. W .. "/b-live-state" .. (batch and " --batch" or " --no-batch"),
      W .. "/b-serve.out")
    pids[#pids + 1] = srv
    local base = "http://127.0.0.1:" .. sport
    local token = sh("build/blueprint token --role admin --state " .. W .. "/b-live-state"):match("%S+")
    local function call(method, path, body)
      if body then write(W .. "/b-body", body) end
      return sh("curl -s -X " .. method .. " -H 'Authorization: Bearer " .. token .. "' "
        .. (body and ("--data-binary @" .. W .. "/b-body ") or "") .. base .. path)
    end
    local cfg = { api_url = "http://127.0.0.1:" .. port, api_key = "emulator-api-token" }
    for k, v in pairs(DEPTH) do cfg[k] = v end
    local id = assert(call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      core.json_encode({ name = "live", config = cfg })):match('"id":"([^"]+)"'), "install failed")
    local function delivered_total()
      return tonumber(call("GET", "/metrics"):match("\nblueprint_events_delivered_total (%d+)")) or 0
    end
    local tag = batch and "lb" or "lu"
    local times = {}
    for i = 0, LIVE do   -- 0: the warm-up (the account's field ids looked up)
      local before = delivered_total()
      local t = now_ms()
      call("POST", "/v1/integrations/" .. id .. "/events", identify(tag, i))
      local done
      for _ = 1, 3000 do
        if delivered_total() > before then done = now_ms(); break end
        sleep(0.01)
      end
      assert(done, "live identify " .. i .. " was not delivered")
      if i > 0 then times[#times + 1] = done - t end
    end
    os.execute("kill -TERM " .. srv)
    table.sort(times)
    return times[(#times + 1) // 2]
  end
  local on, off = live(true), live(false)
  print(("live=%d live_p50_batch_ms=%d live_p50_plain_ms=%d"):format(LIVE, on, off))
end)
for _, p in ipairs(pids) do os.execute("kill " .. p .. " 2>/dev/null") end
if not ok then io.stderr:write(tostring(err), "\n"); os.exit(1) end
