-- Recoverable errors: an event that ended in `error` (a broken mapping) is
-- replayed after the fix and delivered, in `serve` (hot reload, then
-- POST …/dead-letters/replay) and in `deliver` (`blueprint dlq replay`);
-- every outcome names the blueprint revision that judged it, and Live
-- Events says when the files on disk were rejected and the previous
-- revision still runs.  Tagged #cli so it also runs against the ASan build.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

-- identify.lua with a runtime error for every event (it compiles, so a
-- reload accepts it): the event ends in `error`, not in a dead letter.
local function break_at_runtime(original)
  return (original:gsub("return function%(event, ctx%)\n",
    "return function(event, ctx)\n  local broken = nil\n  broken.field = 1\n", 1))
end

-- "identify.lua:N": the line break_at_runtime's error is raised on
local function broken_line(text)
  local n = 0
  for line in text:gmatch("[^\n]*\n") do
    n = n + 1
    if line:find("broken.field", 1, true) then return "identify.lua:" .. n end
  end
end

describe("recoverable errors #cli #serve", function()
  it("serve: a mapping error fixed by hot reload, then the failed event replayed and delivered", function()
    local emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local srv = S.start_server({ blueprints = dir })
    finally(function() srv.stop(); emu.stop() end)
    local st, it = srv.call("POST", INSTALL, S.install_body("Recover", S.emulator_account(emu, 0)))
    assert.are.equal(201, st)
    local good_rev = it.blueprint.running
    assert.matches("^%x+$", good_rev)
    assert.are.equal("current", it.blueprint.status)
    local live_path = "/v1/admin/integrations/" .. it.id .. "/live-events?limit=50"

    -- 1. a broken edit that compiles: accepted, and the event ends in error
    local mapping = dir .. "/activecampaign/identify.lua"
    local original = io.open(mapping):read("a")
    S.write(mapping, break_at_runtime(original))
    local broken_rev = S.eventually(function()
      local _, b = srv.call("GET", live_path)
      return b.blueprint.running ~= good_rev and b.blueprint.running
    end, 10)
    assert.is_truthy(broken_rev, "the edit was not reloaded")
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("fix@example.com", "fix-1"))
    local failed = S.eventually(function()
      local _, b = srv.call("GET", live_path .. "&outcome=error")
      return #b.events == 1 and b.events[1]
    end, 10)
    assert.is_truthy(failed, "the event did not end in error")
    assert.are.equal("error", failed.state)
    assert.are.equal(broken_rev, failed.outcome.blueprint_revision)
    assert.matches(broken_line(break_at_runtime(original)), failed.outcome.reason, 1, true)
    -- resending is a duplicate: replay is the way
    local _, dup = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("fix@example.com", "fix-1"))
    assert.are.equal(1, dup.duplicates)

    -- 2. an edit that does not compile: rejected; Live Events says so
    S.write(mapping, "return function(event, ctx)\n  this is not lua\nend\n")
    local hint = S.eventually(function()
      local _, b = srv.call("GET", live_path)
      return b.blueprint.status == "rejected" and b.blueprint
    end, 10)
    assert.is_truthy(hint, "Live Events shows no rejected reload")
    assert.are.equal(broken_rev, hint.running)
    assert.are_not.equal(broken_rev, hint.on_disk)
    assert.matches("identify.lua:2", hint.error, 1, true)
    assert.matches("the previous version (revision " .. broken_rev .. ") keeps running", hint.note, 1, true)
    local _, got = srv.call("GET", "/v1/admin/integrations/" .. it.id)
    assert.are.equal("rejected", got.blueprint.status)

    -- 3. the fix: the original file, hot-reloaded (same contents: the same revision as at first)
    S.write(mapping, original)
    local fixed = S.eventually(function()
      local _, b = srv.call("GET", live_path)
      return b.blueprint.status == "current" and b.blueprint.running == good_rev and b.blueprint
    end, 10)
    assert.is_truthy(fixed, "the fix was not reloaded")
    assert.are.equal(good_rev, fixed.on_disk)
    assert.are.equal(0, #emu.contacts())

    -- 4. replay: the error is re-queued (dead letters only: nothing), then delivered by the fixed mapping
    local rst, none = srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay",
      '{"all":true,"state":"dead"}')
    assert.are.equal(200, rst)
    assert.are.equal(0, none.replayed)
    assert.are.equal(400, (srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay",
      '{"all":true,"state":"held"}')))
    local _, res = srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay", '{"all":true}')
    assert.are.same({ replayed = 1, dead_letters = 0, errors = 1 }, res)
    local done = S.eventually(function()
      local _, b = srv.call("GET", live_path .. "&outcome=delivered")
      return #b.events == 1 and b.events[1]
    end, 10)
    assert.is_truthy(done, "the replayed event was not delivered")
    assert.are.equal("fix-1", done.outcome.message_id)
    assert.are.equal(good_rev, done.outcome.blueprint_revision)
    assert.are.equal("fix@example.com", emu.contacts()[1].email)
    local _, errs = srv.call("GET", live_path .. "&outcome=error")
    assert.are.equal(0, #errs.events)
    -- the audit log says what was replayed
    local _, log = srv.call("GET", "/v1/admin/audit-log?action=dead_letters.replay")
    assert.matches("0 dead letters and 1 errors replayed (all)", log.entries[1].detail, 1, true)
  end)

  it("serve: {\"ids\":[…]} replays an error by id", function()
    local emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local mapping = dir .. "/activecampaign/identify.lua"
    local original = io.open(mapping):read("a")
    S.write(mapping, break_at_runtime(original))
    local srv = S.start_server({ blueprints = dir })
    finally(function() srv.stop(); emu.stop() end)
    local _, it = srv.call("POST", INSTALL, S.install_body("Recover", S.emulator_account(emu, 0)))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("ids@example.com", "ids-1"))
    local failed = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=error")
      return #b.events == 1 and b.events[1]
    end, 10)
    assert.is_truthy(failed)
    S.write(mapping, original)
    assert.is_truthy(S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id)
      return b.blueprint.running ~= failed.outcome.blueprint_revision
    end, 10), "the fix was not reloaded")
    local _, res = srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay",
      core.json_encode({ ids = { failed.outcome.id } }))
    assert.are.equal(1, res.errors)
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1 end, 10), "not delivered after replay")
  end)
end)

describe("recoverable errors in deliver #cli", function()
  it("deliver: a mapping error fixed, then `dlq replay` and deliver send it", function()
    local emu = S.start_emulator("--rate-limit 0")
    finally(function() emu.stop() end)
    local cfg = S.emulator_config(emu)
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local bp = dir .. "/activecampaign"
    local mapping = bp .. "/identify.lua"
    local original = io.open(mapping):read("a")
    S.write(mapping, break_at_runtime(original))
    local st = S.tmpdir()
    local function deliver(input)
      local out, err, code = S.sh(S.bin .. " deliver " .. bp .. " --config " .. cfg .. " --state " .. st
        .. " --rate-limit 200 --retry-base-ms 20", input)
      local lines = {}
      for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(core.json_decode(l), l) end
      return lines, err, code
    end
    local lines, err, code = deliver(S.identify("cli@example.com", "cli-1") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("error", lines[1].outcome)
    local broken_rev = lines[1].blueprint_revision
    assert.matches("^%x+$", broken_rev)

    local out, _, lcode = S.sh(S.bin .. " dlq list --state " .. st)
    assert.are.equal(0, lcode)
    assert.matches('"message_id":"cli-1"', out, 1, true)
    assert.matches('"outcome":"error"', out, 1, true)
    assert.are.equal("", (S.sh(S.bin .. " dlq list --only dead --state " .. st)))

    S.write(mapping, original)
    local _, rerr, rcode = S.sh(S.bin .. " dlq replay --all --state " .. st)
    assert.are.equal(0, rcode)
    assert.matches("0 dead letters and 1 errors re-queued", rerr, 1, true)
    lines, err, code = deliver("")
    assert.are.equal(0, code, err)
    assert.are.equal(1, #lines)
    assert.are.equal("delivered", lines[1].outcome)
    assert.are.equal("cli-1", lines[1].message_id)
    assert.are_not.equal(broken_rev, lines[1].blueprint_revision)
    assert.are.equal("cli@example.com", emu.contacts()[1].email)
    assert.are.equal("", (S.sh(S.bin .. " dlq list --state " .. st)))
    os.remove(cfg)
  end)

  it("dry-run output carries no blueprint revision (golden fixtures stay as they are)", function()
    local cfg = S.emulator_config({ url = "http://127.0.0.1:1", port = 1 })
    local out = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. cfg, S.identify("d@example.com", "d-1"))
    os.remove(cfg)
    assert.is_nil(out:find("blueprint_revision", 1, true))
  end)
end)
