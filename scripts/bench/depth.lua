-- `make bench`: requests per identify with ActiveCampaign's contact depth
-- (lists, tags, custom fields), cold and with a warm cache, through serve.
--
--   lua5.4 scripts/bench/depth.lua WORKDIR EVENTS
--
-- Starts the emulator (2 accounts, rate limit off) and one `serve`
-- (--rate-limit 1000000), installs a plain integration on account 0 and one
-- with lists [1, 2], tags and three custom fields on account 1, then posts
-- EVENTS identify events (each a new contact, the same two tags and three
-- field traits) three times: to the plain one, to the depth one (cold: its
-- account's tags and fields are looked up), and again to the depth one (warm:
-- ctx.cache knows them), then three times more to the warm batch's contacts:
-- unchanged (same), consent withdrawn (denied), consent granted again with a
-- third tag (changed).  After each batch is delivered it counts the
-- account's requests at the emulator.  Prints key=value lines: requests per
-- event, and lookup requests (GET/POST /api/3/tags, GET /api/3/fields) per
-- batch.
--
-- Orders (Deep Data): an integration with deep_data and Event
-- Tracking on account 2 gets EVENTS Order Completed from new buyers (cold:
-- each buyer's customer is looked up and created; the first order also
-- finds the connection and Event Tracking's switch), then EVENTS new orders
-- from the same buyers (warm: customers cached, contacts synced recently).
-- Every order is new, so each costs its documented lookup and its create.
local W, N = arg[1], tonumber(arg[2])
local core = require("blueprint_core")

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end
local function write(path, text) local f = assert(io.open(path, "wb")); f:write(text); f:close() end
local function sleep(s) os.execute("sleep " .. s) end

local function start(cmd, out)
  local pid = sh(cmd .. " > " .. out .. " 2>" .. out .. ".err & echo $!"):match("%d+")
  for _ = 1, 200 do
    local port = sh("cat " .. out):match("listening on http://127%.0%.0%.1:(%d+)")
    if port then return pid, port end
    sleep(0.05)
  end
  error("did not start: " .. cmd)
end

local emu_pid, emu_port = start("build/ac-emulator --port 0 --rate-limit 0 --accounts 3", W .. "/d-emu.out")
os.execute("rm -rf " .. W .. "/d-state")
local srv_pid, srv_port = start("build/blueprint serve --port 0 --state " .. W .. "/d-state --rate-limit 1000000",
  W .. "/d-serve.out")
local ok, err = pcall(function()
  local base = "http://127.0.0.1:" .. srv_port
  local token = sh("build/blueprint token --role admin --state " .. W .. "/d-state"):match("%S+")
  local function call(method, path, body)
    if body then write(W .. "/d-body", body) end
    return sh("curl -s -X " .. method .. " -H 'Authorization: Bearer " .. token .. "' "
      .. (body and ("--data-binary @" .. W .. "/d-body ") or "") .. base .. path)
  end
  local function install(name, k, extra)
    local config = {
      api_url = "http://acct" .. k .. ".localhost:" .. emu_port,
      api_key = k == 0 and "emulator-api-token" or ("emulator-api-token-" .. k),
    }
    for key, v in pairs(extra or {}) do config[key] = v end
    local id = call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      core.json_encode({ name = name, config = config })):match('"id":"([^"]+)"')
    return assert(id, "install " .. name .. " failed")
  end
  local plain = install("plain", 0)
  local depth = install("depth", 1, { lists = { 1, 2 }, tags = true,
    custom_fields = { birthday = "BIRTHDAY", plan = "Plan", interests = "Interests" } })

  local function delivered()
    return tonumber(call("GET", "/metrics"):match("\nblueprint_events_delivered_total (%d+)")) or 0
  end
  local function emu(path) return sh("curl -s http://127.0.0.1:" .. emu_port .. path) end
  local function account_requests(k) return core.json_decode(emu("/_emulator/stats")).accounts[k + 1].requests end
  local posted, seen = 0, 0
  -- one batch: N contacts (new ones, or those of batch `o.who` again, with
  -- o.tags and consent o.granted); returns requests per event and lookups
  -- at the account
  local function batch(id, k, tag, o)
    o = o or {}
    local before = account_requests(k)
    local evs = {}
    for i = 1, N do
      evs[i] = core.json_encode({ type = "identify", messageId = tag .. i, traits = {
        email = (o.who or tag) .. i .. "@example.com", first_name = "Ada", tags = o.tags or { "vip", "newsletter" },
        birthday = "1990-05-17", plan = "Pro", interests = { "Shoes", "Hats" } },
        context = { consent = { marketing = o.granted ~= false } } })
    end
    for from = 1, N, 200 do
      call("POST", "/v1/integrations/" .. id .. "/events", table.concat(evs, "\n", from, math.min(N, from + 199)))
    end
    posted = posted + N
    for _ = 1, 1200 do
      if delivered() >= posted then break end
      sleep(0.05)
    end
    assert(delivered() >= posted, "batch " .. tag .. " was not delivered")
    local lookups = 0
    -- the request log is large: pick method, path and account out of it
    local log = emu("/_emulator/requests")
    local i = 0
    for method, path, a in log:gmatch('"method":"(%u+)","path":"([^"]+)","api_token":"[^"]*","account":(%-?%d+)') do
      i = i + 1
      if i > seen and tonumber(a) == k and (path == "/api/3/tags" or path == "/api/3/fields") then
        lookups = lookups + 1
      end
    end
    seen = i
    return (account_requests(k) - before) / N, lookups
  end
  local plain_rpe = batch(plain, 0, "p")
  local cold_rpe, cold_lookups = batch(depth, 1, "c")
  local warm_rpe, warm_lookups = batch(depth, 1, "w")
  -- the same contacts again: nothing changed; then consent withdrawn; then
  -- granted again with a third tag (consent and tags changed)
  local same_rpe = batch(depth, 1, "s", { who = "w" })
  local denied_rpe = batch(depth, 1, "d", { who = "w", granted = false })
  local changed_rpe = batch(depth, 1, "g", { who = "w", tags = { "vip", "newsletter", "gold" } })
  print(("events=%d plain_rpe=%.2f cold_rpe=%.2f warm_rpe=%.2f cold_lookups=%d warm_lookups=%d "
    .. "same_rpe=%.2f denied_rpe=%.2f changed_rpe=%.2f"):format(
    N, plain_rpe, cold_rpe, warm_rpe, cold_lookups, warm_lookups, same_rpe, denied_rpe, changed_rpe))

  -- ---- Order Completed with Deep Data (account 2) ----
  local function order_rows()
    local emu_url = "http://acct2.localhost:" .. emu_port
    local orders = install("orders", 2, { deep_data = true, event_tracking_account_id = "1000003",
      event_tracking_key = "emulator-event-key-2", event_tracking_url = emu_url .. "/event" })
    local function order_batch(tag, buyer)
      local before = account_requests(2)
      local evs = {}
      for i = 1, N do
        evs[i] = core.json_encode({ type = "track", event = "Order Completed", messageId = tag .. i,
          timestamp = "2026-11-27T10:00:00Z", properties = { order_id = tag .. "-" .. i, total = "59.97",
            tax = "4", shipping = "5", currency = "usd",
            products = { { product_id = "p1", name = "Shoe", price = "25.49", quantity = 2 } } },
          context = { traits = { email = buyer .. i .. "@example.com" }, consent = { marketing = true } } })
      end
      for from = 1, N, 200 do
        call("POST", "/v1/integrations/" .. orders .. "/events", table.concat(evs, "\n", from, math.min(N, from + 199)))
      end
      posted = posted + N
      for _ = 1, 2400 do
        if delivered() >= posted then break end
        sleep(0.05)
      end
      assert(delivered() >= posted, "order batch " .. tag .. " was not delivered")
      return (account_requests(2) - before) / N
    end
    local cold = order_batch("oc", "buyer")
    local warm = order_batch("ow", "buyer")
    print(("orders=%d order_cold_rpe=%.2f order_warm_rpe=%.2f"):format(N, cold, warm))
  end
  order_rows()
end)
os.execute("kill -TERM " .. srv_pid .. " " .. emu_pid)
if not ok then io.stderr:write(tostring(err), "\n"); os.exit(1) end
