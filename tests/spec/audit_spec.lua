-- The audit log: every install, change, delete, dead-letter replay and
-- blueprint reload, with the token's subject as the actor and never a
-- secret's value; readable by viewers, with filters and cursor paging.
-- And tokens bound to an issuer and audience when the server asks.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

describe("audit log #cli #serve", function()
  it("records who changed what, without secret values, newest first, with filters and paging", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({})
    finally(function() srv.stop(); emu.stop() end)
    local ada = srv.token("admin", nil, "--subject ada@signal.example")
    local st, it = srv.call("POST", INSTALL, core.json_encode({ name = "Audited", config = {
      api_url = emu.url, api_key = S.EMU_TOKEN } }), ada)
    assert.are.equal(201, st)
    local new_key = "ak-new-" .. os.time()
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. it.id,
      '{"config":{"api_key":"' .. new_key .. '"},"events":{"Webinar Registered":{"enabled":true}}}', ada)))
    assert.are.equal(200, (srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay",
      '{"all":true}', srv.token("editor", nil, "--subject bob"))))
    assert.are.equal(204, (srv.call("DELETE", "/v1/admin/integrations/" .. it.id, nil, ada)))

    local viewer = srv.token("viewer", nil, "--subject carol")
    local code, log, raw = srv.call("GET", "/v1/admin/audit-log", nil, viewer)
    assert.are.equal(200, code)
    assert.is_nil(raw:find(new_key, 1, true), "a secret value is in the audit log")
    assert.is_nil(raw:find(S.EMU_TOKEN, 1, true), "a secret value is in the audit log")
    local actions = {}
    for i, e in ipairs(log.entries) do actions[i] = e.action end
    assert.are.same({ "integration.delete", "dead_letters.replay", "integration.update", "integration.install" }, actions)
    local update = log.entries[3]
    assert.are.equal("ada@signal.example", update.actor)
    assert.are.equal("admin", update.role)
    assert.are.equal(it.id, update.integration_id)
    assert.are.equal(1, update.revision_before)
    assert.are.equal(2, update.revision_after)
    assert.matches("api_key changed", update.detail, 1, true)
    assert.matches("events.Webinar Registered added", update.detail, 1, true)
    assert.are.equal("bob", log.entries[2].actor)
    assert.are.equal(core.null, log.next_cursor)

    local _, filtered = srv.call("GET", "/v1/admin/audit-log?action=integration.update", nil, viewer)
    assert.are.equal(1, #filtered.entries)
    local _, by_actor = srv.call("GET", "/v1/admin/audit-log?actor=ada@signal.example", nil, viewer)
    assert.are.equal(3, #by_actor.entries)
    -- two at a time
    local _, page1 = srv.call("GET", "/v1/admin/audit-log?limit=2", nil, viewer)
    assert.are.equal(2, #page1.entries)
    local _, page2 = srv.call("GET", "/v1/admin/audit-log?limit=2&cursor=" .. page1.next_cursor, nil, viewer)
    assert.are.equal(2, #page2.entries)
    assert.are.equal("integration.update", page2.entries[1].action)
    assert.are.equal(core.null, page2.next_cursor)
    -- viewers read it and change nothing
    assert.are.equal(403, (srv.call("POST", INSTALL, core.json_encode({ name = "Nope", config = {
      api_url = emu.url, api_key = "k" } }), viewer)))
  end)

  it("records a blueprint reload, accepted or rejected, with the system as actor", function()
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local srv = S.start_server({ blueprints = dir })
    finally(function() srv.stop() end)
    local page = dir .. "/activecampaign/page.lua"
    local original = io.open(page):read("a")
    S.write(page, "return function(event, ctx)\n  this is not lua\nend\n")
    local log = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/audit-log?action=blueprint.reload")
      return #b.entries >= 1 and b
    end, 5)
    assert.is_truthy(log, "no reload entry")
    assert.are.equal("system", log.entries[1].actor)
    assert.matches("rejected", log.entries[1].detail, 1, true)
    S.write(page, original .. "\n-- edited\n")
    assert.is_truthy(S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/audit-log?action=blueprint.reload")
      return #b.entries >= 2 and b.entries[1].detail:find("reloaded", 1, true)
    end, 5), "no entry for the good reload")
  end)
end)

describe("token issuer and audience #cli #serve", function()
  it("refuses tokens without the configured issuer or audience", function()
    local srv = S.start_server({ args = "--jwt-issuer signal --jwt-audience blueprints" })
    finally(function() srv.stop() end)
    local st, body = srv.call("GET", "/v1/admin/integrations", nil, srv.token("admin"))
    assert.are.equal(401, st)
    assert.matches("issuer", body.error.message, 1, true)
    st = srv.call("GET", "/v1/admin/integrations", nil, srv.token("admin", nil, "--issuer signal --audience billing"))
    assert.are.equal(401, st)
    st = srv.call("GET", "/v1/admin/integrations", nil, srv.token("admin", nil, "--issuer signal --audience blueprints"))
    assert.are.equal(200, st)
  end)
end)

-- The editor's revision history (docs/contracts.md, The web console): a file is stored once
-- however many revisions have it, and old revisions go (count and age),
-- with the audit log saying which.
describe("blueprint revision history #serve", function()
  local EDITOR = "/v1/admin/blueprints/activecampaign"
  -- server.db's size with its write-ahead log folded in first: the log
  -- holds a page copy per transaction until a checkpoint, which a slow stop
  -- (the ThreadSanitizer build) may leave undone; that is not storage
  local function db_bytes(state)
    S.sh("sqlite3 " .. state .. "/server.db 'PRAGMA wal_checkpoint(TRUNCATE);' > /dev/null")
    local out = S.sh("du -cb " .. state .. "/server.db* | tail -1 | cut -f1")
    return tonumber(out:match("%d+"))
  end

  it("stores a 600 KB file once over five saves, keeps the newest N and says what it pruned", function()
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local srv = S.start_server({ blueprints = dir, env = "BLUEPRINT_REVISIONS_KEEP=3" })
    finally(function() srv.stop() end)
    local ada = srv.token("editor", nil, "--subject ada")
    local helpers = io.open(dir .. "/activecampaign/helpers.lua"):read("a")
    local page = io.open(dir .. "/activecampaign/page.lua"):read("a")
    local pad = {}
    for i = 1, 11000 do pad[i] = string.format("-- padding %06d: a long comment to make the file large\n", i) end
    local big = helpers .. table.concat(pad)
    assert.is_true(#big > 600000)
    srv.stop()
    local before = db_bytes(srv.state)
    srv = S.start_server({ blueprints = dir, state = srv.state, env = "BLUEPRINT_REVISIONS_KEEP=3" })
    -- one save adds the large file, four more change another file
    local st, body = srv.call("PUT", EDITOR .. "/files", '{"files":' .. core.json_encode({ ["helpers.lua"] = big }) .. '}', ada)
    assert.are.equal(200, st, body)
    for n = 1, 4 do
      st = srv.call("PUT", EDITOR .. "/files", '{"files":' .. core.json_encode({ ["page.lua"] = page .. "-- save " .. n .. "\n" })
        .. ',"message":"save ' .. n .. '"}', ada)
      assert.are.equal(200, st)
    end
    -- revisions 1 (as found on disk) to 6: the newest three are kept
    local _, revs = srv.call("GET", EDITOR .. "/revisions", nil, ada)
    local numbers = {}
    for i, r in ipairs(revs.revisions) do numbers[i] = r.number end
    assert.are.same({ 6, 5, 4 }, numbers)
    st = srv.call("POST", EDITOR .. "/rollback", '{"number":1}', ada)
    assert.are.equal(404, st)
    -- the oldest kept still rolls back, large file and all
    st, body = srv.call("POST", EDITOR .. "/rollback", '{"number":4}', ada)
    assert.are.equal(200, st, body)
    assert.are.equal(big, io.open(dir .. "/activecampaign/helpers.lua"):read("a"))
    local _, log = srv.call("GET", "/v1/admin/audit-log?action=blueprint.prune", nil, srv.token("viewer"))
    assert.is_true(#log.entries >= 1)
    local pruned = {}
    for _, e in ipairs(log.entries) do pruned[#pruned + 1] = e.detail end
    pruned = table.concat(pruned, "\n")
    assert.matches("activecampaign: 1 blueprint revision pruned (numbers 1 to 1; kept: the newest 3", pruned, 1, true)
    assert.matches("numbers 3 to 3", pruned, 1, true)
    srv.stop()
    -- five saves of a 600 KB file stored it (and its one diff) once, not five times
    assert.is_false(srv.killed, "serve did not stop within 30 s of SIGTERM")
    local grown = db_bytes(srv.state) - before
    assert.is_true(grown < 2.5 * #big, "server.db grew by " .. grown .. " bytes")
  end)
end)

