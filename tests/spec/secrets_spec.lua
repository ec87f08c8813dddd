-- Secrets at rest: every secret config value is stored AES-256-GCM
-- encrypted under the master key ring (STATE/master.key or
-- BLUEPRINT_MASTER_KEY_FILE); `blueprint rotate-key` re-wraps them while
-- serve runs; a wrong key or an altered value is a clear startup error.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

local function install(srv, emu, api_key, event_key)
  return srv.call("POST", INSTALL, core.json_encode({ name = "secret", config = {
    api_url = emu.url, api_key = api_key,
    event_tracking_account_id = "1000001", event_tracking_key = event_key, event_tracking_url = emu.url .. "/event",
  } }))
end

-- every file under dir that contains `needle`, as a list
local function files_with(dir, needle)
  local out = S.sh("grep -rlF -- '" .. needle .. "' " .. dir)
  return S.lines(out)
end

local function serve_fails(state, env)
  return S.sh((env or "") .. " timeout 10 " .. S.bin .. " serve --port 0 --state " .. state)
end

describe("secrets at rest #cli #serve", function()
  it("keeps every secret out of every file of the state directory, WAL included", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({})
    finally(function() srv.stop(); emu.stop() end)
    local st, it = install(srv, emu, S.EMU_TOKEN, S.EMU_EVENT_KEY)
    assert.are.equal(201, st)
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("at-rest@example.com", "ar1"))
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1 end), "not delivered")
    local rotated = "ak-rotated-" .. os.time()
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"config":{"api_key":"' .. rotated .. '"}}')))
    for _, secret in ipairs({ S.EMU_TOKEN, S.EMU_EVENT_KEY, rotated }) do
      assert.are.same({}, files_with(srv.state, secret))
    end
    srv.stop()
    for _, secret in ipairs({ S.EMU_TOKEN, S.EMU_EVENT_KEY, rotated }) do
      assert.are.same({}, files_with(srv.state, secret))
    end
    assert.are.equal(1, #files_with(srv.state, "bp:enc:v2:"))   -- server.db, and nothing else
  end)

  it("rotates the master key while serving, and a restart needs only the new key", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({})
    finally(function() srv.stop(); emu.stop() end)
    local _, it = install(srv, emu, S.EMU_TOKEN, S.EMU_EVENT_KEY)
    local before = io.open(srv.state .. "/master.key"):read("a")
    local _, err, code = S.sh(S.bin .. " rotate-key --state " .. srv.state)
    assert.are.equal(0, code, err)
    assert.matches("1 stored revisions re-encrypted", err, 1, true)
    local after = io.open(srv.state .. "/master.key"):read("a")
    local keys = {}
    for kid in after:gmatch("\n(k%x+) ") do keys[#keys + 1] = kid end
    assert.are.equal(1, #keys)
    assert.is_nil(before:find(keys[1], 1, true), "the key did not change")
    -- delivery goes on, and a change made now is sealed under the new key
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("rot1@example.com", "rot1"))
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. it.id,
      '{"events":{"Webinar Registered":{"enabled":true}}}')))
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1 end), "not delivered after the rotation")
    srv.stop()
    local srv2 = S.start_server({ state = srv.state })
    finally(function() srv2.stop() end)
    srv2.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("rot2@example.com", "rot2"))
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 2 end), "not delivered after a restart")
  end)

  it("refuses to start with a wrong master key or an altered ciphertext, saying which", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({})
    finally(function() srv.stop(); emu.stop() end)
    install(srv, emu, S.EMU_TOKEN, S.EMU_EVENT_KEY)
    srv.stop()
    local other = os.tmpname()
    S.write(other, "k0000000 " .. string.rep("ab", 32) .. "\n")
    local _, err, code = serve_fails(srv.state, "BLUEPRINT_MASTER_KEY_FILE=" .. other)
    assert.are_not.equal(0, code)
    assert.matches("which " .. other .. " does not hold", err, 1, true)
    assert.is_nil(err:find(S.EMU_TOKEN, 1, true))
    os.remove(other)
    -- one character of a stored ciphertext changed
    local db = srv.state .. "/server.db"
    local f = io.open(db, "rb")
    local bytes = f:read("a")
    f:close()
    local _, at = bytes:find("bp:enc:v2:k%x+:[%w+/=]*:")
    assert.is_truthy(at, "no ciphertext in server.db")
    local pos = at + 5   -- inside the nonce, ciphertext and tag
    local flipped = bytes:sub(pos, pos) == "A" and "B" or "A"
    f = io.open(db, "wb")
    f:write(bytes:sub(1, pos - 1), flipped, bytes:sub(pos + 1))
    f:close()
    _, err, code = serve_fails(srv.state)
    assert.are_not.equal(0, code)
    assert.matches("does not decrypt", err, 1, true)
    assert.matches("altered", err, 1, true)
  end)
end)
