-- Install and PATCH check what they can without sending data (docs/blueprints.md, Verify):
-- the blueprint's verify: mapping (activecampaign/verify.lua) is sent to the
-- emulator and the answer carries "checks"; a failing check never refuses
-- the change.
local S = require("support")

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

local function check_of(body)
  assert.is_table(body.checks, "no checks in the answer")
  assert.are.equal(1, #body.checks)
  return body.checks[1]
end

describe("install and update checks #serve", function()
  local emu, srv
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    srv = S.start_server()
  end)
  after_each(function()
    srv.stop()
    emu.stop()
  end)

  it("says the key was refused, installs anyway, and says it is accepted once PATCHed", function()
    local acct = S.emulator_account(emu, 0)
    acct.api_key = "wrong-key"
    local status, body = srv.call("POST", INSTALL, S.install_body("bad key", acct))
    assert.are.equal(201, status)
    assert.is_string(body.id)
    local c = check_of(body)
    assert.is_false(c.ok)
    assert.are.equal("auth_failure", c.outcome)
    assert.are.equal(403, c.status)
    assert.matches("credentials were refused", c.message, 1, true)
    assert.matches("invalid API key", c.message, 1, true)      -- the blueprint's auth_failure_help
    assert.is_nil(c.message:find("wrong-key", 1, true))         -- never the key itself
    assert.matches("/api/3/eventTracking", c.check, 1, true)
    local again
    status, again = srv.call("PATCH", "/v1/admin/integrations/" .. body.id,
      S.core.json_encode({ config = { api_key = S.EMU_TOKEN } }))
    assert.are.equal(200, status)
    c = check_of(again)
    assert.is_true(c.ok, c.message)
    assert.are.same({ 200, "ok" }, { c.status, c.outcome })
    -- the operator's log says it too
    local log = io.open(srv.log):read("a")
    assert.matches('"msg":"integration check failed"', log, 1, true)
  end)

  it("says Event Tracking is switched off", function()
    os.execute("curl -s -o /dev/null -X PUT -H 'Api-Token: " .. S.EMU_TOKEN .. "' --data-binary "
      .. "'{\"eventTracking\":{\"enabled\":false}}' " .. emu.url .. "/api/3/eventTracking")
    local status, body = srv.call("POST", INSTALL, S.install_body("tracking off", S.emulator_account(emu, 0)))
    assert.are.equal(201, status)
    local c = check_of(body)
    assert.is_false(c.ok)
    assert.are.equal("refused", c.outcome)
    assert.matches("Event Tracking is switched off", c.message, 1, true)
  end)

  it("installs with an unreachable API URL, and the check says so", function()
    local acct = S.emulator_account(emu, 0)
    -- a port nothing listens on: the emulator's, once it is stopped
    local dead = S.start_emulator("--rate-limit 0")
    local url = dead.url
    dead.stop()
    acct.api_url = url
    local status, body = srv.call("POST", INSTALL, S.install_body("unreachable", acct))
    assert.are.equal(201, status)
    local c = check_of(body)
    assert.is_false(c.ok)
    assert.are.same({ 0, "unreachable" }, { c.status, c.outcome })
    assert.matches("the integration is installed", c.message, 1, true)
    -- and it is there
    local s2, got = srv.call("GET", "/v1/admin/integrations/" .. body.id)
    assert.are.equal(200, s2)
    assert.are.equal("unreachable", got.name)
  end)

  it("checks the key with GET /api/3/lists when Event Tracking is not configured", function()
    local acct = S.emulator_account(emu, 0)
    acct.event_tracking_account_id, acct.event_tracking_key, acct.event_tracking_url = nil, nil, nil
    local status, body = srv.call("POST", INSTALL, S.install_body("contacts only", acct))
    assert.are.equal(201, status)
    local c = check_of(body)
    assert.is_true(c.ok, c.message)
    assert.matches("GET .*/api/3/lists%?limit=1$", c.check)
  end)
end)

describe("install and update checks: what is not checked #serve", function()
  it("answers a PATCH of the event table alone at once, without checks", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server()
    finally(function() srv.stop(); emu.stop() end)
    local _, body = srv.call("POST", INSTALL, S.install_body("events only", S.emulator_account(emu, 0)))
    local before = #emu.requests()
    local status, again = srv.call("PATCH", "/v1/admin/integrations/" .. body.id,
      S.core.json_encode({ events = { ["Webinar Registered"] = { enabled = true } } }))
    assert.are.equal(200, status)
    assert.is_nil(again.checks)
    assert.are.equal(before, #emu.requests())
  end)
end)
