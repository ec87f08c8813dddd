-- Batches in the delivery loop (`deliver --batch`) against the local
-- ActiveCampaign emulator (127.0.0.1 only): a backlog of identifies goes as
-- bulk imports and status requests, one event alone still goes by
-- /contact/sync, a validation 400 dead-letters the contact it names, and a
-- deliver killed while an import is queued asks for its status when it runs
-- again instead of importing twice.  Tagged #cli so the run is repeated with
-- the ASan/UBSan build.
local S = require("support")

local FAST = " --rate-limit 200 --retry-base-ms 20"

local function identifies(n, prefix, traits)
  local t = {}
  for i = 1, n do
    local extra = traits and traits(i) or ""
    t[i] = ('{"type":"identify","messageId":"%s%d","traits":{"email":"%s%d@example.com"%s},'
      .. '"context":{"consent":{"marketing":true}}}'):format(prefix, i, prefix, i, extra)
  end
  return table.concat(t, "\n") .. "\n"
end

-- The emulator's requests by path.
local function count_paths(emu)
  local n = {}
  for _, r in ipairs(emu.requests()) do n[r.path] = (n[r.path] or 0) + 1 end
  return n
end

local function outcomes(lines)
  local n = {}
  for _, l in ipairs(lines) do n[l.outcome] = (n[l.outcome] or 0) + 1 end
  return n
end

describe("batch delivery #cli", function()
  local emu, cfg
  before_each(function()
    emu = S.start_emulator("--rate-limit 0 --import-delay-ms 200")
    cfg = S.emulator_config(emu)
  end)
  after_each(function()
    emu.stop()
    os.remove(cfg)
  end)

  it("sends a backlog of 60 identifies as bulk imports, each event delivered with its batch", function()
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST,
      identifies(60, "b"))
    assert.are.equal(0, code, err)
    assert.are.equal(60, #lines)
    assert.are.same({ delivered = 60 }, outcomes(lines))
    local n = count_paths(emu)
    assert.are.equal(1, n["/api/3/import/bulk_import"], "imports")
    assert.is_true((n["/api/3/import/info"] or 0) >= 1, "status requests")
    assert.is_nil(n["/api/3/contact/sync"])
    assert.are.equal(60, #emu.contacts())
    for _, l in ipairs(lines) do
      assert.are.equal(60, l.batch.size)
      assert.are.equal(lines[1].batch.id, l.batch.id)
      assert.matches("^POST http://127%.0%.0%.1:%d+/api/3/import/bulk_import$", l.batch.request)
      assert.is_true(l.batch.status_requests >= 1)
      assert.matches("delivered in batch %d+ %(60 events%)", l.reason)
      assert.are.equal("identify", l.type)
      assert.are.equal(1, l.attempts)
    end
  end)

  it("takes at most max_events per batch", function()
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST,
      identifies(260, "m"))
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 260 }, outcomes(lines))
    local sizes = {}
    for _, l in ipairs(lines) do sizes[l.batch.id] = l.batch.size end
    local list = {}
    for _, size in pairs(sizes) do list[#list + 1] = size end
    table.sort(list)
    assert.are.same({ 10, 250 }, list)
    assert.are.equal(2, count_paths(emu)["/api/3/import/bulk_import"])
  end)

  it("sends one event alone by /contact/sync, and fewer than min_events one by one", function()
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST,
      identifies(1, "one"))
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.is_nil(lines[1].batch)
    lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST, identifies(9, "few"))
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 9 }, outcomes(lines))
    local n = count_paths(emu)
    assert.are.equal(10, n["/api/3/contact/sync"])
    assert.is_nil(n["/api/3/import/bulk_import"])
  end)

  it("with --no-batch sends a backlog one by one as before", function()
    local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. S.tmpdir() .. FAST .. " --no-batch", identifies(20, "nb"))
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 20 }, outcomes(lines))
    assert.is_nil(count_paths(emu)["/api/3/import/bulk_import"])
  end)

  it("dead-letters the contact a validation 400 names and delivers the rest in the next batch", function()
    local input = identifies(12, "v", function(i) return i == 5 and ',"first_name":42' or ',"first_name":"F"' end)
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST, input)
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 11, dead_letter = 1 }, outcomes(lines))
    local by = S.by_index(lines)
    assert.are.equal("dead_letter", by[4].outcome)
    assert.matches("ActiveCampaign refused the contact: first_name must be a string", by[4].reason, 1, true)
    assert.are.equal(400, by[4].status)
    assert.are.equal(12, by[4].batch.size)
    for i, l in pairs(by) do
      if i ~= 4 then
        assert.are.equal(11, l.batch.size)
        assert.are.equal(2, l.attempts)
      end
    end
    local n = count_paths(emu)
    assert.are.equal(2, n["/api/3/import/bulk_import"])
    assert.are.equal(11, #emu.contacts())
  end)

  it("retries a bulk import answered 503, then delivers", function()
    emu.faults({ fail_next = 1, status = 503 })
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST, identifies(10, "r"))
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 10 }, outcomes(lines))
    local reqs = emu.requests()
    assert.are.equal(503, reqs[1].status)
    assert.are.equal("/api/3/import/bulk_import", reqs[2].path)
    assert.are.equal(2, lines[1].attempts)
  end)

  it("resumes a deliver killed while the import is queued by asking for its status, importing nothing twice", function()
    emu.faults({ import_delay_ms = 600000 })
    local st = S.tmpdir()
    local inf = os.tmpname()
    S.write(inf, identifies(40, "k"))
    local pidf = os.tmpname()
    os.execute(S.bin .. " deliver " .. S.AC .. " --batch --config " .. cfg .. " --state " .. st .. FAST .. " " .. inf
      .. " > /dev/null 2>&1 & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    -- the import was accepted and its first status request answered "active"
    local asked = S.eventually(function() return (count_paths(emu)["/api/3/import/info"] or 0) >= 1 end, 20)
    os.execute("kill -9 " .. pid)
    assert.is_truthy(asked, "no status request within 20 s")
    assert.are.equal(0, #emu.contacts())
    emu.post("/_emulator/imports/complete", "{}")
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. st .. FAST, "")
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 40 }, outcomes(lines))
    assert.are.equal(40, lines[1].batch.size)
    local n = count_paths(emu)
    assert.are.equal(1, n["/api/3/import/bulk_import"], "imported twice")
    assert.is_true(n["/api/3/import/info"] >= 2)
    assert.is_nil(n["/api/3/contact/sync"])
    assert.are.equal(40, #emu.contacts())
    os.remove(inf)
    os.remove(pidf)
  end)

  it("resumes two queued batches after SIGKILL without loading their events again as new ones", function()
    -- once the first resumed batch closes, the loader reads the store from
    -- its start: the other batch's events (pending until their outcomes are
    -- saved) are in memory already and must not form a batch of their own
    emu.faults({ import_delay_ms = 600000 })
    local st = S.tmpdir()
    local inf = os.tmpname()
    S.write(inf, identifies(500, "t"))
    local pidf = os.tmpname()
    os.execute(S.bin .. " deliver " .. S.AC .. " --batch --config " .. cfg .. " --state " .. st .. FAST .. " " .. inf
      .. " > /dev/null 2>&1 & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    local asked = S.eventually(function() return (count_paths(emu)["/api/3/import/info"] or 0) >= 2 end, 20)
    os.execute("kill -9 " .. pid)
    assert.is_truthy(asked, "no status request for both imports within 20 s")
    assert.are.equal(2, count_paths(emu)["/api/3/import/bulk_import"])
    emu.post("/_emulator/imports/complete", "{}")
    emu.faults({ import_delay_ms = 200 })   -- an import sent again finishes (and the test fails, not hangs)
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. st .. FAST, "")
    assert.are.equal(0, code, err)
    assert.are.equal(500, #lines, "outcome lines")
    assert.are.same({ delivered = 500 }, outcomes(lines))
    local once = {}
    for _, l in ipairs(lines) do
      assert.is_nil(once[l.message_id], l.message_id .. " has two outcomes")
      once[l.message_id] = true
    end
    assert.are.equal(2, count_paths(emu)["/api/3/import/bulk_import"], "imported again after the restart")
    assert.are.equal(500, #emu.contacts())
    os.remove(inf)
    os.remove(pidf)
  end)

  it("sends the events again when killed before the vendor took the batch", function()
    -- the import is refused with Retry-After: 60, so the batch stays recorded as sent, unanswered
    emu.faults({ fail_next = 1, status = 503, retry_after = 60 })
    local st = S.tmpdir()
    local inf = os.tmpname()
    S.write(inf, identifies(20, "s"))
    local pidf = os.tmpname()
    os.execute(S.bin .. " deliver " .. S.AC .. " --batch --config " .. cfg .. " --state " .. st .. FAST .. " " .. inf
      .. " > /dev/null 2>&1 & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    local refused = S.eventually(function() return count_paths(emu)["/api/3/import/bulk_import"] end, 20)
    os.execute("kill -9 " .. pid)
    assert.is_truthy(refused, "the import did not arrive within 20 s")
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. st .. FAST, "")
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 20 }, outcomes(lines))
    assert.matches("may not have reached the vendor: its events are sent again", err, 1, true)
    local reqs = emu.requests()
    assert.are.equal(503, reqs[1].status)
    assert.are.equal("/api/3/import/bulk_import", reqs[2].path)
    assert.are.equal(200, reqs[2].status)
    assert.are.equal(2, count_paths(emu)["/api/3/import/bulk_import"])
    assert.are.equal(20, #emu.contacts())
    os.remove(inf)
    os.remove(pidf)
  end)

  it("pauses on a refused key and holds the batch's events", function()
    emu.faults({ fail_next = 1, status = 401 })
    local lines, err, code = S.deliver("--batch --config " .. cfg .. " --state " .. S.tmpdir() .. FAST, identifies(10, "a"))
    assert.are.equal(3, code, err)
    assert.are.same({ held = 10 }, outcomes(lines))
    assert.matches("integration paused", lines[1].reason, 1, true)
    assert.are.equal(1, #emu.requests())
  end)
end)

describe("batch delivery of the webhook blueprint #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  -- A copy of the webhook blueprint; files replace or add its files.
  local function webhook(files, batch)
    local dir = S.tmpdir()
    assert(os.execute("cp -r blueprints/webhook/. " .. dir))
    for name, text in pairs(files or {}) do S.write(dir .. "/" .. name, text) end
    if batch then
      local f = assert(io.open(dir .. "/blueprint.yaml"))
      local yaml = f:read("a"):gsub("\nbatch:.*$", "\n")
      f:close()
      S.write(dir .. "/blueprint.yaml", yaml .. batch)
    end
    return dir
  end

  local function deliver(dir, n)
    local cfg = os.tmpname()
    S.write(cfg, "url: " .. emu.url .. "/webhook/in\nbatch_events: true\nconsent: {default_policy: allow}\n")
    local out, err, code = S.sh(S.bin .. " deliver " .. dir .. " --batch --config " .. cfg .. " --state " .. S.tmpdir()
      .. FAST, identifies(n, "w"))
    os.remove(cfg)
    local lines = {}
    for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
    return lines, err, code
  end

  it("POSTs a backlog as one JSON array of envelopes (batch_events on)", function()
    local lines, err, code = deliver(webhook(), 12)
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 12 }, outcomes(lines))
    local reqs = emu.requests()
    assert.are.equal(1, #reqs)
    local body = S.core.json_decode(reqs[1].body)
    assert.are.equal(12, #body)
    assert.are.equal("w1", body[1].messageId)
    assert.are.equal(12, lines[1].batch.size)
  end)

  it("sends the batch mapping's steps first, then its request with what they answered", function()
    local dir = webhook({ ["b.lua"] = [[
return function(events, ctx)
  local r = ctx.send({ method = "POST", url = ctx.config.url .. "/token", json = { n = #events } })
  local request = { method = "POST", url = ctx.config.url, json = { ok = r.json.ok, n = #events } }
  return request, function(answer)
    local results = {}
    for i in ipairs(events) do results[i] = ctx.delivered() end
    return results
  end
end
]] }, "batch:\n  events: [identify]\n  mapping: b.lua\n  max_events: 50\n  min_events: 10\n")
    local lines, err, code = deliver(dir, 11)
    assert.are.equal(0, code, err)
    assert.are.same({ delivered = 11 }, outcomes(lines))
    local reqs = emu.requests()
    assert.are.equal(2, #reqs)
    assert.are.equal("/webhook/in/token", reqs[1].path)
    assert.are.equal("/webhook/in", reqs[2].path)
    assert.are.same({ ok = true, n = 11 }, S.core.json_decode(reqs[2].body))
    assert.matches("^POST http://127%.0%.0%.1:%d+/webhook/in$", lines[1].batch.request)
  end)
end)

describe("batch delivery in serve #cli #serve", function()
  it("sends an intake backlog as bulk imports; Live Events and /metrics show the batches", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 200")
    local srv = S.start_server({ args = "--batch" })
    finally(function() srv.stop(); emu.stop() end)
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("ActiveCampaign", S.emulator_account(emu, 0)))
    assert.are.equal(201, status)
    local st, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(60, "s"))
    assert.are.equal(202, st)
    assert.are.equal(60, res.accepted)
    local live = S.eventually(function()
      local _, body = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=100&outcome=delivered")
      return #body.events >= 60 and body
    end, 60)
    assert.is_truthy(live, "the 60 events were not all delivered")
    local batched = 0
    for _, e in ipairs(live.events) do
      if e.outcome.batch then
        batched = batched + 1
        assert.is_true(e.outcome.batch.size >= 10)
        assert.matches("/api/3/import/bulk_import$", e.outcome.batch.request)
        assert.matches("^delivered in batch", e.outcome.reason)
      end
    end
    assert.is_true(batched >= 10, batched .. " events went in batches")
    local n = count_paths(emu)
    assert.is_true(n["/api/3/import/bulk_import"] >= 1)
    assert.are.equal(60 - batched, n["/api/3/contact/sync"] or 0)
    assert.are.equal(60, #emu.contacts())
    local _, _, metrics = srv.call("GET", "/metrics")
    assert.matches("blueprint_batches_total " .. n["/api/3/import/bulk_import"] .. "\n", metrics, 1, true)
    assert.matches("blueprint_batched_events_total " .. batched .. "\n", metrics, 1, true)
  end)
end)

describe("Live Events of batches in serve #cli #serve", function()
  it("lists a queued batch as open, then filters the events by batch (ids never reused)", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 600000")
    local srv = S.start_server({ args = "--batch" })
    finally(function() srv.stop(); emu.stop() end)
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("ActiveCampaign", S.emulator_account(emu, 0)))
    assert.are.equal(201, status)
    local path = "/v1/admin/integrations/" .. it.id .. "/live-events"
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(30, "o"))))
    -- queued at the vendor: open, with its status requests so far, its events not listed yet
    local open = S.eventually(function()
      local _, body = srv.call("GET", path .. "?limit=100")
      local b = body.open_batches and body.open_batches[1]
      return b and b.state == "queued" and b.status_requests >= 1 and body
    end, 30)
    assert.is_truthy(open, "no queued batch with a status request in open_batches within 30 s")
    local first = open.open_batches[1]
    assert.is_true(first.size >= 10 and first.size <= 30, "size " .. first.size)
    local _, only = srv.call("GET", path .. "?batch=" .. first.id)
    assert.are.equal(0, #only.events, "an open batch's events are pending, not listed")
    emu.post("/_emulator/imports/complete", "{}")
    local function batch_of(id, n)
      return S.eventually(function()
        local _, body = srv.call("GET", path .. "?limit=100&batch=" .. id)
        return #body.events >= n and body
      end, 30)
    end
    local done = batch_of(first.id, first.size)
    assert.is_truthy(done, "batch " .. first.id .. "'s events were not listed by ?batch=")
    assert.are.equal(first.size, #done.events)
    for _, e in ipairs(done.events) do
      assert.are.equal(first.id, e.outcome.batch.id)
      assert.are.equal(first.size, e.outcome.batch.size)
      assert.are.equal("delivered in batch " .. first.id .. " (" .. first.size .. " events)", e.outcome.reason)
    end
    assert.is_truthy(S.eventually(function()
      local _, body = srv.call("GET", path)
      return #body.open_batches == 0
    end, 30), "the batch stayed open after its events were delivered")
    local _, none = srv.call("GET", path .. "?batch=" .. first.id .. "&outcome=dead_letter")
    assert.are.equal(0, #none.events)
    -- the next backlog's batch (the table is empty again) gets a new id
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(30, "p"))))
    local second = S.eventually(function()
      local _, body = srv.call("GET", path)
      return body.open_batches[1]
    end, 30)
    assert.is_truthy(second, "the second backlog formed no batch")
    assert.are_not.equal(first.id, second.id, "a batch id was given twice")
    emu.post("/_emulator/imports/complete", "{}")
    assert.is_truthy(batch_of(second.id, second.size), "batch " .. second.id .. "'s events were not listed")
    local _, again = srv.call("GET", path .. "?limit=100&batch=" .. first.id)
    assert.are.equal(first.size, #again.events, "the first batch's list changed")
    for _, bad in ipairs({ "0", "-1", "x", "3x" }) do
      local st, err = srv.call("GET", path .. "?batch=" .. bad)
      assert.are.equal(400, st, "batch=" .. bad)
      assert.matches("batch must be", err.error.message)
    end
  end)
end)

describe("batch delivery in serve across a kill and a config change #cli #serve", function()
  local function start(emu, st)
    return S.start_server({ args = "--batch", state = st })
  end
  local function install(srv, emu)
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("ActiveCampaign", S.emulator_account(emu, 0)))
    assert.are.equal(201, status)
    return it
  end
  local function delivered(srv, it, n)
    return S.eventually(function()
      local _, body = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=100&outcome=delivered")
      return #body.events >= n and body
    end, 60)
  end

  it("resumes a queued import after SIGKILL by asking for its status, importing nothing twice", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 600000")
    local st = S.tmpdir()
    local srv = start(emu, st)
    finally(function() srv.stop(); emu.stop() end)
    local it = install(srv, emu)
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(30, "q"))))
    local asked = S.eventually(function() return (count_paths(emu)["/api/3/import/info"] or 0) >= 1 end, 30)
    srv.kill()
    assert.is_truthy(asked, "no status request within 30 s")
    local imports = count_paths(emu)["/api/3/import/bulk_import"]
    emu.post("/_emulator/imports/complete", "{}")
    srv.stop()
    srv = start(emu, st)
    local live = delivered(srv, it, 30)
    assert.is_truthy(live, "the 30 events were not all delivered after the restart")
    local n = count_paths(emu)
    assert.are.equal(imports, n["/api/3/import/bulk_import"], "imported again after the restart")
    assert.are.equal(30, #emu.contacts())
  end)

  it("keeps a queued batch open through a config change, and reads its status with the new config", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 600000")
    local srv = start(emu, S.tmpdir())
    finally(function() srv.stop(); emu.stop() end)
    local it = install(srv, emu)
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identifies(30, "c"))))
    assert.is_truthy(S.eventually(function() return (count_paths(emu)["/api/3/import/info"] or 0) >= 1 end, 30))
    local imports = count_paths(emu)["/api/3/import/bulk_import"]
    local st, patched = srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"config":{"tags":true}}')
    assert.are.equal(200, st)
    assert.are.equal(2, patched.revision)
    emu.post("/_emulator/imports/complete", "{}")
    assert.is_truthy(delivered(srv, it, 30), "the 30 events were not all delivered")
    assert.are.equal(imports, count_paths(emu)["/api/3/import/bulk_import"], "imported again after the change")
    assert.are.equal(30, #emu.contacts())
  end)
end)

describe("batch.max_per_minute #cli", function()
  -- A copy of the ActiveCampaign blueprint whose batches are small and
  -- bounded to 2 imports a minute, against an emulator that allows 2.
  local function bounded()
    local dir = S.tmpdir()
    assert(os.execute("cp -r " .. S.AC .. "/. " .. dir))
    local f = assert(io.open(dir .. "/blueprint.yaml"))
    local yaml = f:read("a")
    f:close()
    yaml = yaml:gsub("max_events: 250", "max_events: 5"):gsub("min_events: 10", "min_events: 2")
      :gsub("max_per_minute: 100", "max_per_minute: 2")
    S.write(dir .. "/blueprint.yaml", yaml)
    return dir
  end

  it("paces a backlog's imports to the bound: no 429, and single events go on while an import waits", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 100 --imports-per-minute 2")
    local cfg = S.emulator_config(emu)
    finally(function() emu.stop(); os.remove(cfg) end)
    -- 15 identifies: 3 imports of 5, the third beyond the minute's 2; then
    -- a custom event of the same account, which goes one by one
    local input = identifies(15, "p") .. '{"type":"track","event":"Webinar Registered","messageId":"t1",'
      .. '"properties":{"email":"solo@example.com"},"context":{"consent":{"marketing":true}}}\n'
    local out, err, code = S.sh(S.bin .. " deliver " .. bounded() .. " --batch --config " .. cfg .. " --state "
      .. S.tmpdir() .. FAST, input)
    assert.are.equal(0, code, err)
    local lines = {}
    for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
    assert.are.same({ delivered = 16 }, outcomes(lines))
    local imports, event_before_third = {}, nil
    for _, r in ipairs(emu.requests()) do
      assert.are_not.equal(429, r.status, r.path .. " was refused by the emulator's limit")
      if r.path == "/api/3/import/bulk_import" then imports[#imports + 1] = r end
      if r.path == "/event" then event_before_third = #imports < 3 end
    end
    assert.are.equal(3, #imports)
    -- by the emulator's own clock, no minute holds more than 2 imports
    for _, r in ipairs(imports) do
      local within = 0
      for _, q in ipairs(imports) do
        if q.at_ms <= r.at_ms and r.at_ms - q.at_ms < 60000 then within = within + 1 end
      end
      assert.is_true(within <= 2, within .. " imports in the minute up to one of them")
    end
    assert.is_true(event_before_third, "the custom event waited for the third import")
    assert.are.equal(16, #emu.contacts())
  end)
end)
