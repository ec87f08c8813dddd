-- Batched delivery survives SIGKILL (issue 24): `serve --batch` drains a
-- backlog of identifies (lists, tags, custom fields) as bulk imports to the
-- local emulator (127.0.0.1 only), and is killed with SIGKILL at 10 moments
-- chosen by a seeded PRNG, restarted on the same --state after each, until
-- the backlog is drained.  Then every event has one outcome, delivered; every
-- contact is in the emulator with its list, tags and fields; and no email
-- went to the vendor twice, except in the window docs/delivery.md admits: a
-- batch recorded as sent whose answer was not yet recorded when the process
-- died (its events go again).
--
-- The kills are the emulator's (/_emulator/faults kill_pid): at the Nth bulk
-- import or import/info it handles after the kill is armed, before its answer
-- leaves or a few ms after, so a moment is "while an import is sent", "while
-- it is queued at the vendor", "while status requests run" or "while the
-- finished import's outcomes are committed".  The seed is printed; set
-- BATCH_KILL_SEED to replay a run (BATCH_KILL_DEBUG=1 also prints the store's
-- open batches, the imports and the server's log at each kill, and every
-- request with the kills between them).  A single event's own request in
-- flight at a kill (a contact sync, when fewer than min_events wait) may go
-- again too, as the docs say of any request in flight.  Tagged #cli #serve as
-- the other serve specs (make test runs it with the ASan and TSan builds too).
local S = require("support")

local SEED = tonumber(os.getenv("BATCH_KILL_SEED") or "") or 20261207
local KILLS = 10
local FIRST = 2000          -- identifies posted at the start
local WAVE = 250            -- posted at a restart, as often as needed to keep KEEP waiting (outside open
local KEEP = 500            -- batches) while kills remain
local MOST = 6000           -- never more than this in all
local WINDOW_MS = 2000      -- an import counts as "in flight at the kill" when received at most this long before it
local IMPORT = "/api/3/import/bulk_import"

-- A small PRNG of our own (busted seeds math.random itself): 64-bit LCG.
local function prng(seed)
  local x = seed
  return function(lo, hi)
    x = x * 6364136223846793005 + 1442695040888963407
    return lo + ((x >> 33) % (hi - lo + 1))
  end
end

local function email(i) return ("bk%d@example.com"):format(i) end
local function plan(i) return i % 2 == 0 and "Pro" or "Free" end

local function identifies(from, to)
  local t = {}
  for i = from, to do
    t[#t + 1] = ('{"type":"identify","messageId":"bk%d","traits":{"email":"%s","first_name":"F%d","plan":"%s",'
      .. '"company_size":"%d","tags":["killed","t%d"]},"context":{"consent":{"marketing":true}}}')
      :format(i, email(i), i, plan(i), i % 50, i % 3)
  end
  return table.concat(t, "\n") .. "\n"
end

-- One query's rows on the state's events.db (the sqlite3 shell; WAL lets it
-- read beside a running server), each a list of columns.
local function sql(st, query)
  local p = io.popen("sqlite3 -batch -separator '|' " .. st .. "/events.db \"" .. query .. "\" 2>&1")
  local text = p:read("a")
  local ok = p:close()
  assert(ok, "sqlite3: " .. text)
  local rows = {}
  for line in text:gmatch("[^\n]+") do
    local row = {}
    for col in (line .. "|"):gmatch("([^|]*)|") do row[#row + 1] = col end
    rows[#rows + 1] = row
  end
  return rows
end

local function count_by_state(st)
  local n = {}
  for _, r in ipairs(sql(st, "SELECT state, count(*) FROM events GROUP BY state")) do n[r[1]] = tonumber(r[2]) end
  return n
end

-- The batches recorded as sent and not yet answered: a set of emails each.
local function sending_batches(st)
  local out = {}
  for _, r in ipairs(sql(st, "SELECT b.id, json_extract(e.body, '$.traits.email') FROM batches b, "
    .. "json_each('[' || b.events || ']') j JOIN events e ON e.id = j.value WHERE b.state = 'sending'")) do
    local id = tonumber(r[1])
    out[id] = out[id] or {}
    out[id][r[2]] = true
  end
  local list = {}
  for id, set in pairs(out) do list[#list + 1] = { id = id, emails = set } end
  return list
end

local function same_set(list, set)
  local n = 0
  for _, e in ipairs(list) do
    if not set[e] then return false end
    n = n + 1
  end
  for _ in pairs(set) do n = n - 1 end
  return n == 0
end

local function gone(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return true end
  local text = f:read("a")
  f:close()
  return text:match("State:%s+Z") ~= nil
end

describe("batched delivery killed 10 times #cli #serve", function()
  it("loses nothing and imports nothing twice when serve --batch is killed at 10 seeded moments", function()
    local rand = prng(SEED)
    -- two of each kind of moment, in a seeded order, each with seeded details
    local kinds = {
      function() return { on = "import", after = rand(1, 2), delay = 0, what = "import received, answer not sent" } end,
      function() return { on = "import", after = rand(1, 2), delay = rand(1, 40), what = "import answered, queued being recorded" } end,
      function() return { on = "info", after = 1, delay = rand(0, 300), what = "queued at the vendor" } end,
      function() return { on = "info", after = rand(2, 4), delay = 0, what = "status requests running" } end,
      function() return { on = "info_done", after = 1, delay = rand(0, 30), what = "finished import's outcomes committed" } end,
    }
    local order = {}
    for k = 1, KILLS do order[k] = (k - 1) % #kinds + 1 end
    for k = KILLS, 2, -1 do
      local j = rand(1, k)
      order[k], order[j] = order[j], order[k]
    end
    print(("# batch_kill_spec: seed %d (BATCH_KILL_SEED=%d to replay)"):format(SEED, SEED))

    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 1500 --imports-per-minute 0")
    local st = S.tmpdir()
    local srv = S.start_server({ args = "--batch", state = st })
    finally(function() srv.stop(); emu.stop() end)
    local account = S.emulator_account(emu, 0)
    account.lists = { 2 }
    account.tags = true
    account.custom_fields = { plan = "Plan", company_size = "COMPANY_SIZE" }
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("ActiveCampaign", account))
    assert.are.equal(201, status)
    local posted = 0
    local function post(n)
      local from = posted + 1
      posted = posted + n
      local st2, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(from, posted))
      assert.are.equal(202, st2, S.core.json_encode(res))
      assert.are.equal(n, res.accepted)
    end
    for _ = 1, FIRST // 500 do post(500) end

    local runs = {}   -- per kill: the imports received before it, the batches then recorded as sent
    for k = 1, KILLS do
      local m = kinds[order[k]]()
      emu.faults({ kill_pid = tonumber(srv.pid), kill_on = m.on, kill_after = m.after, kill_delay_ms = m.delay })
      local dead = S.eventually(function() return gone(srv.pid) end, 20)
      if not dead then   -- never reached: the moment did not come (say which), the test goes on with a kill now
        emu.faults({ kill_pid = tonumber(srv.pid), kill_on = "now" })
        dead = S.eventually(function() return gone(srv.pid) end, 10)
        m.what = m.what .. " (did not come in 20 s: killed at once)"
      end
      assert.is_truthy(dead, "serve did not die at kill " .. k)
      srv.stop()   -- a sanitizer report in its log fails here
      local state = emu.get("/_emulator/state?account=0")
      local kill = state.kills[#state.kills]
      local n = count_by_state(st)
      runs[k] = { imports = #state.imports, at_ms = kill.at_ms, sending = sending_batches(st) }
      local queued = sql(st, "SELECT count(*) FROM batches WHERE state = 'queued'")[1][1]
      print(("# kill %2d: at the %s %d + %d ms (%s); %d imports so far; batches recorded as sent %d, as queued %s; "
        .. "%d delivered, %d pending"):format(k, m.on, m.after, m.delay, m.what, #state.imports,
        #runs[k].sending, queued, n.delivered or 0, n.pending or 0))
      if os.getenv("BATCH_KILL_DEBUG") then
        for _, r in ipairs(sql(st, "SELECT id, state, length(events), substr(events, 1, 12), polls FROM batches")) do
          print("#   batch row " .. table.concat(r, " "))
        end
        for _, imp in ipairs(state.imports) do
          print(("#   import %d %s %s..%s (%d) %.0f"):format(imp.seq, imp.status, imp.emails[1], imp.emails[#imp.emails], #imp.emails, imp.received_ms))
        end
        print("#   log: " .. srv.logs():gsub("\n", "\n#   log: "))
      end
      srv = S.start_server({ args = "--batch", state = st })
      -- pending outside the open batches: each run has batches of its own to form
      local waiting = (n.pending or 0) - tonumber(sql(st, "SELECT coalesce(sum(length(events) - "
        .. "length(replace(events, ',', '')) + 1), 0) FROM batches")[1][1])
      while k < KILLS and waiting < KEEP and posted + WAVE <= MOST do
        post(WAVE)
        waiting = waiting + WAVE
      end
    end

    if os.getenv("BATCH_KILL_DEBUG") then
      local kills = emu.get("/_emulator/state?account=0").kills
      local k = 1
      for _, r in ipairs(emu.requests()) do
        while kills[k] and kills[k].at_ms < r.at_ms do print(("#   --- kill %d at %.0f"):format(k, kills[k].at_ms)); k = k + 1 end
        if r.path:match("^/api") then print(("#   %.0f %s %s %d"):format(r.at_ms, r.method, r.path, r.status)) end
      end
    end
    -- the last run, not killed: everything is drained
    local drained = S.eventually(function()
      local n = count_by_state(st)
      return (n.delivered or 0) == posted and n
    end, 60)
    local left = count_by_state(st)
    assert.is_truthy(drained, "not drained within 60 s: " .. S.core.json_encode(left))
    srv.stop()
    srv = S.start_server({ args = "--batch", state = st })   -- for the API below

    -- every event: one row, one final outcome, delivered
    assert.are.same({ delivered = posted }, left)
    assert.are.same({}, sql(st, "SELECT message_id FROM events GROUP BY message_id HAVING count(*) > 1"))
    assert.are.same({ { tostring(posted) } },
      sql(st, "SELECT count(DISTINCT message_id) FROM events WHERE json_extract(outcome, '$.outcome') = 'delivered'"))
    assert.are.same({}, sql(st, "SELECT id FROM batches"))
    -- "delivered in batch N (M events)": N names one batch, of M events
    assert.are.same({}, sql(st, "SELECT json_extract(outcome, '$.batch.id') AS b, count(*), "
      .. "min(json_extract(outcome, '$.batch.size')), max(json_extract(outcome, '$.batch.size')) FROM events "
      .. "WHERE b IS NOT NULL GROUP BY b HAVING count(*) != max(json_extract(outcome, '$.batch.size')) "
      .. "OR min(json_extract(outcome, '$.batch.size')) != max(json_extract(outcome, '$.batch.size'))"))
    for _, o in ipairs({ "retrying", "dead_letter", "error", "held" }) do
      local code, body, raw = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=10&outcome=" .. o)
      assert.are.equal(200, code, raw)
      assert.are.equal(0, #body.events, o .. " in Live Events")
    end
    local code, _, raw = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=1000&outcome=delivered")
    assert.are.equal(200, code)
    local live = assert(S.core.json_decode(raw, 256 << 20))
    assert.are.equal(math.min(posted, 1000), #live.events)
    for _, e in ipairs(live.events) do assert.are.equal("delivered", e.outcome.outcome) end

    -- every contact, with its list, tags and fields
    local contacts = emu.contacts()
    assert.are.equal(posted, #contacts)
    local first = {}
    for _, c in ipairs(contacts) do first[c.email] = c.firstName end
    local state = emu.get("/_emulator/state?account=0")
    for i = 1, posted do
      local e = email(i)
      assert.are.equal("F" .. i, first[e], e)
      assert.are.equal(1, (state.memberships[e] or {})["2"], e .. " on list 2")
      local tags = {}
      for _, t in ipairs(state.contact_tags[e] or {}) do tags[t] = true end
      assert.is_true(tags.killed and tags["t" .. i % 3] or false, e .. " tags")
      local f = state.field_values[e] or {}
      assert.are.equal(plan(i), f.Plan, e .. " Plan")
      assert.are.equal(tostring(i % 50), f["Company Size"], e .. " Company Size")
    end

    -- nothing imported twice: an email is in one import, or also in imports
    -- the process died in flight of (received in the run a kill ended, at
    -- most WINDOW_MS before it, the batch of exactly its emails recorded as
    -- sent and unanswered in the store after the kill)
    local orphan, windows = {}, {}
    for _, imp in ipairs(state.imports) do
      assert.are.equal("completed", imp.status, "import " .. imp.seq)
      for k, run in ipairs(runs) do
        local from = k > 1 and runs[k - 1].imports or 0
        if imp.seq > from and imp.seq <= run.imports and run.at_ms - imp.received_ms <= WINDOW_MS then
          for _, b in ipairs(run.sending) do
            if same_set(imp.emails, b.emails) then
              orphan[imp.seq] = k
              windows[k] = true
              print(("# import %d (%d contacts) was in flight at kill %d (received %.0f ms before it): "
                .. "its events went again"):format(imp.seq, #imp.emails, k, run.at_ms - imp.received_ms))
            end
          end
        end
      end
    end
    -- a contact sync (an event sent alone, fewer than min_events waiting)
    -- counts too; one sent again after a kill is the single event's own
    -- in-flight window: received at most WINDOW_MS before a kill
    local sent = {}   -- email -> what carried it, in order: {what =, orphan =}
    for _, imp in ipairs(state.imports) do
      for _, e in ipairs(imp.emails) do
        sent[e] = sent[e] or {}
        table.insert(sent[e], { what = "import " .. imp.seq, orphan = orphan[imp.seq] ~= nil, import = true,
          at = imp.received_ms })
      end
    end
    local syncs = 0
    for _, r in ipairs(emu.requests()) do
      if r.path == "/api/3/contact/sync" and r.status >= 200 and r.status < 300 then
        local e = S.core.json_decode(r.body).contact.email
        local in_flight = false
        for _, run in ipairs(runs) do
          in_flight = in_flight or (r.at_ms <= run.at_ms and run.at_ms - r.at_ms <= WINDOW_MS)
        end
        syncs = syncs + 1
        sent[e] = sent[e] or {}
        table.insert(sent[e], { what = ("sync at %.0f ms"):format(r.at_ms), orphan = in_flight, at = r.at_ms })
      end
    end
    local twice = {}
    for i = 1, posted do
      local e = email(i)
      local list = sent[e] or {}
      assert.is_true(#list >= 1, e .. " never sent")
      -- in the order the emulator received them (one monotonic clock): an event sent alone
      -- whose request was in flight at a kill may go in a batch next
      table.sort(list, function(x, y) return x.at < y.at end)
      local whats = {}
      for _, d in ipairs(list) do whats[#whats + 1] = ("%s (%s)"):format(d.what, d.orphan and "in flight at a kill" or "answered") end
      for n, d in ipairs(list) do
        -- each but the last was in flight at a kill; the last is no import in flight at a kill (its events went again)
        if (n < #list and not d.orphan) or (n == #list and d.orphan and d.import) then
          twice[#twice + 1] = e .. ": " .. table.concat(whats, ", ")
          break
        end
      end
    end
    local nwindows = 0
    for _ in pairs(windows) do nwindows = nwindows + 1 end
    local norphans = 0
    for _ in pairs(orphan) do norphans = norphans + 1 end
    print(("# %d events, %d imports, %d contact syncs; %d of the 10 kills hit an import in flight (%d imports' events sent again)")
      :format(posted, #state.imports, syncs, nwindows, norphans))
    if #twice > 0 then
      local show = {}
      for n = 1, math.min(#twice, 8) do show[n] = twice[n] end
      error(("%d emails sent twice outside the in-flight window, e.g.\n%s"):format(#twice, table.concat(show, "\n")))
    end
  end)
end)
