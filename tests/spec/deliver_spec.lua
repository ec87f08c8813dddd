-- Delivery against the local ActiveCampaign emulator (127.0.0.1 only):
-- the happy path for every mapping, retries, dead letters and replay, auth
-- pauses, pacing, crash recovery and secrets.  Tagged #cli so the run is
-- repeated with the ASan/UBSan build.
local S = require("support")

local function state_dir() return S.tmpdir() end

local function file_has(path, needle)
  local f = io.open(path, "rb")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s:find(needle, 1, true) ~= nil
end

describe("deliver #cli", function()
  local emu, cfg
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    cfg = S.emulator_config(emu)
  end)
  after_each(function()
    emu.stop()
    os.remove(cfg)
  end)

  local FAST = " --rate-limit 200 --retry-base-ms 20"

  it("judges every event when drops and deliveries alternate", function()
    local evs = {}
    for i = 1, 30 do
      evs[i] = ('{"type":"identify","messageId":"alt%d","traits":{"email":"alt%d@example.com"},'
        .. '"context":{"consent":{"marketing":%s}}}'):format(i, i, i % 3 == 0 and "false" or "true")
    end
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST, table.concat(evs, "\n"))
    assert.are.equal(0, code, err)
    assert.are.equal(30, #lines)
    local n = { delivered = 0, drop = 0 }
    for _, l in ipairs(lines) do n[l.outcome] = (n[l.outcome] or 0) + 1 end
    assert.are.same({ delivered = 20, drop = 10 }, n)
    assert.are.equal(20, #emu.contacts())
  end)

  it("delivers every mapping; the emulator shows the contact and its activity", function()
    local st = state_dir()
    local events = table.concat({
      S.identify("Ada@Example.com", "e1"),
      '{"type":"page","messageId":"e2","name":"Pricing","context":{"page":{"url":"https://x.example/p","title":"P"},"traits":{"email":"ada@example.com"},"consent":{"marketing":true}}}',
      S.track_json("Product Viewed", "ada@example.com", '{"product_id":"sku-1","price":19.99}', "e3"),
      S.track_json("Order Completed", "ada@example.com", '{"order_id":1234567890123456789,"revenue":5,"currency":"EUR"}', "e4"),
      S.track_json("Webinar Registered", "ada@example.com", '{"webinar":"W"}', "e5"),
      S.track_json("Not Enabled", "ada@example.com", "{}", "e6"),
    }, "\n") .. "\n"
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, events)
    assert.are.equal(0, code, err)
    local by = S.by_index(lines)
    for i = 0, 4 do assert.are.equal("delivered", by[i].outcome, by[i].reason) end
    assert.are.equal("drop", by[5].outcome)
    assert.are.equal(201, by[0].status)
    local contacts = emu.contacts()
    assert.are.equal(1, #contacts)
    assert.are.equal("ada@example.com", contacts[1].email)
    -- concurrent events may arrive in any order; each must arrive once
    local types, purchase = {}, nil
    for _, log in ipairs(contacts[1].trackingLogs) do
      types[#types + 1] = log.type
      if log.type == "purchase" then purchase = log end
    end
    table.sort(types)
    assert.are.same({ "page_view", "product_viewed", "purchase", "webinar_registered" }, types)
    assert.matches('"order_id":1234567890123456789', purchase.value, 1, true)
    -- one contact sync only: later events found the contact already synced
    local syncs, tokens_ok = 0, true
    for _, r in ipairs(emu.requests()) do
      if r.path == "/api/3/contact/sync" then
        syncs = syncs + 1
        tokens_ok = tokens_ok and r.api_token == S.EMU_TOKEN
      elseif r.path == "/event" then
        assert.are.equal("application/x-www-form-urlencoded", r.content_type)
      end
    end
    assert.are.equal(1, syncs)
    assert.is_true(tokens_ok)
  end)

  it("accepts each message id once: re-running the same input sends nothing twice", function()
    local st = state_dir()
    local input = S.identify("once@example.com", "same-id") .. "\n"
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, input)
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, input)
    assert.are.equal(0, code, err)
    assert.are.equal("duplicate", lines[1].outcome)
    assert.are.equal("same-id", lines[1].message_id)
    assert.are.equal(1, #emu.requests())
  end)

  it("syncs the contact before the first event for an unknown email", function()
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST,
      S.track_json("Order Completed", "new@example.com", '{"order_id":7}', "o1") .. "\n")
    assert.are.equal(0, code, err)
    local reqs = emu.requests()
    assert.are.equal("/api/3/eventTracking", reqs[1].path)   -- Event Tracking is on (helpers.tracking_check)
    assert.are.equal("/api/3/contact/sync", reqs[2].path)
    assert.are.equal("/event", reqs[3].path)
    assert.are.equal(1, #emu.contacts()[1].trackingLogs)
  end)

  it("honours Retry-After on 429: no retry before 2 s", function()
    emu.faults({ fail_next = 1, status = 429, retry_after = 2 })
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST, S.identify("r@example.com") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.are.equal(2, lines[1].attempts)
    local reqs = emu.requests()
    assert.are.equal(429, reqs[1].status)
    assert.is_true(reqs[2].at_ms - reqs[1].at_ms >= 2000, "retried after " .. (reqs[2].at_ms - reqs[1].at_ms) .. " ms")
  end)

  it("retries 5xx HTML pages and connection resets, then delivers", function()
    emu.faults({ fail_next = 2, status = 502, html = true })
    emu.faults({ reset_next = 1 })
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST, S.identify("x@example.com") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.are.equal(4, lines[1].attempts)
  end)

  it("dead-letters after 5 failures, lists it, and delivers it on replay", function()
    local st = state_dir()
    emu.faults({ fail_next = 5, status = 503 })
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, S.identify("d@example.com", "dl-1") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.are.equal(5, lines[1].attempts)
    assert.matches("after 5 failed attempts", lines[1].reason)
    local out, _, lcode = S.sh(S.bin .. " dlq list --state " .. st)
    assert.are.equal(0, lcode)
    assert.matches('"message_id":"dl-1"', out, 1, true)
    local _, rerr, rcode = S.sh(S.bin .. " dlq replay --all --state " .. st)
    assert.are.equal(0, rcode)
    assert.matches("1 dead letters and 0 errors re-queued", rerr, 1, true)
    lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, "")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.are.equal("d@example.com", emu.contacts()[1].email)
    out = S.sh(S.bin .. " dlq list --state " .. st)
    assert.are.equal("", out)
  end)

  it("dead-letters a 422 at once with the vendor's answer", function()
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST, S.identify("nodot@localhost") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.are.equal(1, lines[1].attempts)
    assert.are.equal(422, lines[1].status)
    assert.matches("email_invalid", lines[1].response, 1, true)
  end)

  it("dead-letters Event Tracking's success:0 (wrong event key)", function()
    local bad = S.emulator_config(emu, { event_key = "wrong-event-key" })
    local lines, err, code = S.deliver("--config " .. bad .. " --state " .. state_dir() .. FAST,
      S.track_json("Order Completed", "k@example.com", '{"order_id":1}') .. "\n")
    os.remove(bad)
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.matches("Invalid key", lines[1].reason, 1, true)
  end)

  it("pauses on a bad key, holds events, and delivers them once the config is fixed", function()
    local st = state_dir()
    local bad = S.emulator_config(emu, { api_key = "wrong-key-123" })
    local input = S.identify("p1@example.com") .. "\n" .. S.identify("p2@example.com") .. "\n" .. S.identify("p3@example.com") .. "\n"
    local lines, err, code = S.deliver("--config " .. bad .. " --state " .. st .. FAST .. " --concurrency 1", input)
    assert.are.equal(3, code)
    assert.are.equal(3, #lines)
    for _, l in ipairs(lines) do
      assert.are.equal("held", l.outcome)
      assert.matches("invalid API key or wrong API URL: check Settings > Developer", l.reason, 1, true)
    end
    assert.matches("integration paused", err, 1, true)
    assert.are.equal(1, #emu.requests())            -- held, not burned
    -- same bad credentials again: still held, nothing sent
    lines, err, code = S.deliver("--config " .. bad .. " --state " .. st .. FAST, "")
    assert.are.equal(3, code)
    assert.are.equal(1, #emu.requests())
    lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, "")
    os.remove(bad)
    assert.are.equal(0, code, err)
    assert.are.equal(3, #lines)
    for _, l in ipairs(lines) do assert.are.equal("delivered", l.outcome) end
    assert.are.equal(3, #emu.contacts())
  end)

  it("treats a 200 HTML login page from /api/3 as an auth failure", function()
    emu.faults({ login_html_next = 1 })
    local lines, _, code = S.deliver("--config " .. cfg .. " --state " .. state_dir() .. FAST, S.identify("h@example.com") .. "\n")
    assert.are.equal(3, code)
    assert.are.equal("held", lines[1].outcome)
    assert.matches("HTML page", lines[1].reason, 1, true)
  end)

  it("sends each method and body kind as written, one pooled connection handle after another", function()
    -- One handle (concurrency 1) carries every request in turn, so nothing of
    -- one request (a body, a method, a content type) may leak into the next.
    local dir = S.tmpdir()
    S.write(dir .. "/blueprint.yaml", table.concat({
      "vendor: methods", "name: Methods", "category: test", "status: alpha", "consent_category: marketing",
      "config:", "  - {key: api_url, type: url, required: true}", "  - {key: api_key, type: secret}",
      "  - {key: event_tracking_account_id, type: integer}", "  - {key: event_tracking_key, type: secret}",
      "  - {key: event_tracking_url, type: url}",
      "events:",
    }, "\n") .. "\n")
    local kinds = {
      post = "{ url = U .. '/api/3/contact/sync', headers = H, json = { a = 1 } }",
      get = "{ method = 'GET', url = U .. '/api/3/contacts/1', headers = H }",
      del = "{ method = 'DELETE', url = U .. '/api/3/contacts/1', headers = H }",
      put = "{ method = 'PUT', url = U .. '/api/3/contacts/1', headers = H, form = { a = 1, b = 'x y' } }",
      raw = "{ url = U .. '/api/3/contact/sync', body = 'hello', headers = { ['Content-Type'] = 'text/plain', "
        .. "['Api-Token'] = ctx.secret('api_key') } }",
    }
    local order = { "post", "get", "del", "put", "raw", "get" }
    local yaml = io.open(dir .. "/blueprint.yaml", "a")
    for name, request in pairs(kinds) do
      yaml:write("  " .. name .. ": {type: track, mapping: " .. name .. ".lua}\n")
      S.write(dir .. "/" .. name .. ".lua", "return function(event, ctx)\n  local U, H = ctx.config.api_url, { ['Api-Token'] = ctx.secret('api_key') }\n  return "
        .. request .. "\nend\n")
    end
    yaml:close()
    local events = {}
    for i, name in ipairs(order) do
      events[#events + 1] = string.format('{"type":"track","event":"%s","messageId":"m%d","context":{"consent":{"marketing":true}}}', name, i)
    end
    local _, err = S.sh(S.bin .. " deliver " .. dir .. " --config " .. cfg .. " --state " .. state_dir()
      .. " --concurrency 1" .. FAST, table.concat(events, "\n") .. "\n")
    local log = S.sh("curl -s " .. emu.url .. "/_emulator/requests")
    local seen = assert(S.core.json_decode(log))
    local want = {
      { "POST", "application/json", '{"a":1}' },
      { "GET", "", "" },
      { "DELETE", "", "" },
      { "PUT", "application/x-www-form-urlencoded", "a=1&b=x+y" },
      { "POST", "text/plain", "hello" },
      { "GET", "", "" },
    }
    assert.are.equal(#want, #seen, err)
    for i, w in ipairs(want) do
      assert.are.same(w, { seen[i].method, seen[i].content_type, seen[i].body }, "request " .. i)
    end
  end)

  it("keeps the API key out of output, logs and the store", function()
    local st = state_dir()
    local lines, err, code, out = S.deliver("--config " .. cfg .. " --state " .. st .. FAST,
      S.identify("s@example.com") .. "\n" .. S.track_json("Order Completed", "s@example.com", '{"order_id":1}') .. "\n")
    assert.are.equal(0, code, err)
    for _, secret in ipairs({ S.EMU_TOKEN, S.EMU_EVENT_KEY }) do
      assert.is_nil(out:find(secret, 1, true))
      assert.is_nil(err:find(secret, 1, true))
      assert.is_false(file_has(st .. "/blueprint.db", secret))
      assert.is_false(file_has(st .. "/blueprint.db-wal", secret))
    end
    local dl = S.sh(S.bin .. " dlq list --state " .. st)
    assert.is_nil(dl:find(S.EMU_TOKEN, 1, true))
  end)

  it("loses nothing when killed with SIGKILL mid-run", function()
    local st = state_dir()
    local input = {}
    for i = 1, 60 do input[#input + 1] = S.identify(("k%02d@example.com"):format(i), "k" .. i) end
    local inf = os.tmpname()
    S.write(inf, table.concat(input, "\n") .. "\n")
    local pidf = os.tmpname()
    os.execute(S.bin .. " deliver " .. S.AC .. " --config " .. cfg .. " --state " .. st
      .. " --rate-limit 40 --no-batch " .. inf .. " > /dev/null 2>&1 & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    -- one by one (--no-batch): a backlog of identifies would otherwise be two bulk imports, whose
    -- kills batch_kill_spec covers; kill it mid-run: once some, but not all, contacts have arrived
    S.eventually(function() return #emu.contacts() >= 5 end, 10)
    os.execute("kill -9 " .. pid)
    S.sleep(0.1)
    local before = #emu.contacts()
    assert.is_true(before > 0 and before < 60, "killed after " .. before .. " of 60")
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST, "")
    assert.are.equal(0, code, err)
    assert.are.equal(60, #emu.contacts())
    os.remove(inf)
    os.remove(pidf)
  end)
end)

describe("pacing #cli", function()
  it("keeps a stream above the limit under 5 requests/second with few or no 429s", function()
    local emu = S.start_emulator("--rate-limit 5")
    finally(function() emu.stop() end)   -- busted keeps one finally per test
    local cfg = S.emulator_config(emu)
    local input = {}
    for i = 1, 15 do input[#input + 1] = S.identify(("pace%02d@example.com"):format(i)) end
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. S.tmpdir(), table.concat(input, "\n") .. "\n")
    os.remove(cfg)
    assert.are.equal(0, code, err)
    assert.are.equal(15, #lines)
    local limited = 0
    for _, r in ipairs(emu.requests()) do if r.status == 429 then limited = limited + 1 end end
    assert.is_true(limited <= 1, limited .. " requests were rate limited")
    assert.are.equal(15, #emu.contacts())
  end)
end)
