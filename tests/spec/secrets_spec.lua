-- Secrets at rest: every secret config value is stored AES-256-GCM
-- encrypted under the master key ring (STATE/master.key or
-- BLUEPRINT_MASTER_KEY_FILE); `blueprint rotate-key` re-wraps them while
-- serve runs; an integration whose secrets do not open with the key ring
-- (a wrong key file, an altered value) is listed in /healthz, never sent.
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

  -- as a cluster node does: the server starts, says which integrations it
  -- could not open and why (healthz 503, their intake 503), sends nothing
  -- for them, and the others go on
  it("starts with a wrong master key or an altered ciphertext, naming what it could not open", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({})
    finally(function() srv.stop(); emu.stop() end)
    local _, it = install(srv, emu, S.EMU_TOKEN, S.EMU_EVENT_KEY)
    srv.stop()
    local other = os.tmpname()
    S.write(other, "k0000000 " .. string.rep("ab", 32) .. "\n")
    local function unopened_on(env)
      local s = S.start_server({ state = srv.state, env = env })
      local st, h = s.call("GET", "/healthz", nil, false)
      assert.are.equal(503, st, core.json_encode(h))
      assert.are.equal(1, #h.unopened)
      assert.are.equal(it.id, h.unopened[1].integration)
      assert.are.equal("secrets_do_not_decrypt", h.unopened[1].reason)
      local body
      st, body = s.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("nokey@example.com", "nk1"))
      assert.are.equal(503, st, core.json_encode(body))
      assert.are.equal("INTEGRATION_UNAVAILABLE", body.error.code)
      assert.matches("start it with the key file they were sealed with", body.error.message, 1, true)
      s.stop()
      local log = s.logs()
      assert.is_nil(log:find(S.EMU_TOKEN, 1, true), "the key is in the log")
      return log
    end
    assert.matches("which " .. other .. " does not hold", unopened_on("BLUEPRINT_MASTER_KEY_FILE=" .. other), 1, true)
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
    local log = unopened_on(nil)
    assert.matches("does not decrypt", log, 1, true)
    assert.matches("altered", log, 1, true)
    assert.are.equal(0, #emu.contacts(), "something was sent with a secret that did not open")
  end)
end)

-- A hostile editor (docs/blueprints.md, Secrets and destinations): a stored key is never
-- downgraded by a blueprint edit, and never follows a changed URL.
describe("secrets keep their type and destination #serve", function()
  local EDITOR = "/v1/admin/blueprints/activecampaign"
  local emu, srv, dir, integ
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    srv = S.start_server({ blueprints = dir })
    local st
    st, integ = install(srv, emu, S.EMU_TOKEN, S.EMU_EVENT_KEY)
    assert.are.equal(201, st)
  end)
  after_each(function()
    srv.stop()
    emu.stop()
  end)

  it("refuses a save that makes a stored secret a string: the viewer still reads ********, nothing plain on disk", function()
    local yaml = dir .. "/activecampaign/blueprint.yaml"
    local text = io.open(yaml):read("a")
    local downgraded, n = text:gsub("\n    sent_to: %[api_url%]", "", 1)
      :gsub("(key: api_key\n    label: API Key\n    type: )secret", "%1string", 1)
    assert.are.equal(1, n)
    local st, body = srv.call("PUT", EDITOR .. "/files", '{"files":' .. core.json_encode({ ["blueprint.yaml"] = downgraded })
      .. '}', srv.token("editor"))
    assert.are.equal(422, st)
    assert.are.equal("INVALID_BLUEPRINT", body.error.code)
    assert.matches("config field 'api_key' is type: secret", body.error.message, 1, true)
    assert.matches("'secret' (" .. integ.id .. ")", body.error.message, 1, true)
    assert.are.equal(text, io.open(yaml):read("a"))
    local viewer = srv.token("viewer")
    local _, got = srv.call("GET", "/v1/admin/integrations/" .. integ.id, nil, viewer)
    assert.are.equal("********", got.config.api_key)
    -- a change that is allowed goes on: the secret stays sealed on disk
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"events":{"X":{"enabled":true}}}')))
    assert.are.same({}, files_with(srv.state, S.EMU_TOKEN))   -- server.db and server.db-wal
    for _, raw in ipairs(srv.bodies) do assert.is_nil(raw:find(S.EMU_TOKEN, 1, true)) end
  end)

  it("refuses an editor dry-run that would hand a stored secret to a mapping as plain config", function()
    local yaml = io.open(dir .. "/activecampaign/blueprint.yaml"):read("a")
    local downgraded = yaml:gsub("\n    sent_to: %[api_url%]", "", 1)
      :gsub("(key: api_key\n    label: API Key\n    type: )secret", "%1string", 1)
    local leak = 'return function(event, ctx)\n  return { url = ctx.config.api_url .. "/x", json = { k = ctx.config.api_key } }\nend\n'
    local st, body, raw = srv.call("POST", EDITOR .. "/dry-run", '{"files":' .. core.json_encode({ ["blueprint.yaml"] = downgraded,
      ["page.lua"] = leak }) .. ',"integration_id":"' .. integ.id .. '","events":[{"type":"page","name":"P","messageId":"p1",'
      .. '"context":{"consent":{"marketing":true}},"userId":"u1"}]}', srv.token("editor"))
    assert.is_nil(raw:find(S.EMU_TOKEN, 1, true), "the dry-run showed the stored key")
    assert.matches("config field 'api_key' is type: secret", raw, 1, true)
    assert.is_true(st == 422 or (st == 200 and body.ok == false), raw)
  end)

  it("keeps the running version when the type changes on disk (hot reload)", function()
    local yaml = dir .. "/activecampaign/blueprint.yaml"
    local text = io.open(yaml):read("a")
    S.write(yaml, (text:gsub("\n    sent_to: %[event_tracking_url%]", "", 1)
      :gsub("(key: event_tracking_key\n    label: Event Tracking key\n    type: )secret", "%1string", 1)))
    assert.is_truthy(S.eventually(function()
      return srv.logs():find("config field 'event_tracking_key' is type: secret", 1, true) ~= nil
    end), "the reload was not refused: " .. srv.logs())
    local _, got = srv.call("GET", "/v1/admin/integrations/" .. integ.id, nil, srv.token("viewer"))
    assert.are.equal("********", got.config.event_tracking_key)
    assert.are.same({}, files_with(srv.state, S.EMU_EVENT_KEY))
  end)

  it("does not open a stored key whose URL was changed behind the API (server.db, or the cluster's topic)", function()
    srv.stop()
    local db = srv.state .. "/server.db"
    local f = io.open(db, "rb")
    local bytes = f:read("a")
    f:close()
    local from = '"api_url":"' .. emu.url .. '"'
    local to = from:gsub("127%.0%.0%.1", "127.0.0.2")   -- the same length: the page stays valid
    local at = bytes:find(from, 1, true)
    assert.is_truthy(at, "no api_url in server.db")
    f = io.open(db, "wb")
    f:write(bytes:sub(1, at - 1), to, bytes:sub(at + #from))
    f:close()
    srv = S.start_server({ blueprints = dir, state = srv.state })
    assert.is_truthy(S.eventually(function()
      return srv.logs():find("it was stored for another destination than its URL fields now give", 1, true) ~= nil
    end), "the key was opened for the new URL: " .. srv.logs())
    assert.matches('"field":"api_key"', srv.logs(), 1, true)
    local _, got = srv.call("GET", "/v1/admin/integrations/" .. integ.id, nil, srv.token("viewer"))
    assert.are.equal("********", got.config.api_key)
    assert.are.equal("http://127.0.0.2:" .. emu.port, got.config.api_url)
    -- entering the key again with the URL makes it deliverable again
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"config":{"api_url":"' .. emu.url
      .. '","api_key":"' .. S.EMU_TOKEN .. '"}}')))
    srv.call("POST", "/v1/integrations/" .. integ.id .. "/events", S.identify("again@example.com", "ag1"))
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1 end), "not delivered after the key was entered again")
  end)

  it("refuses a PATCH that changes api_url without api_key, naming both", function()
    local st, body = srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"config":{"api_url":"https://evil.example.com"}}')
    assert.are.equal(422, st)
    assert.matches("changing 'api_url' needs config field 'api_key' in the same change", body.error.message, 1, true)
    assert.are.equal("config.api_key", body.error.field)
    -- the tracking URL carries the Event Tracking key the same way
    st, body = srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"config":{"event_tracking_url":"https://evil.example.com/e"}}')
    assert.are.equal(422, st)
    assert.matches("changing 'event_tracking_url' needs config field 'event_tracking_key'", body.error.message, 1, true)
    -- with the key: accepted, and the new key goes to the new URL
    st = srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"config":{"api_url":"' .. emu.url .. '/","api_key":"'
      .. S.EMU_TOKEN .. '"}}')
    assert.are.equal(200, st)
    -- a change that leaves the URLs as they are needs no key
    assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. integ.id, '{"config":{"consent_field_id":"7"}}')))
  end)
end)


-- Where a blueprint may send (docs/blueprints.md, Secrets and destinations): blueprint.yaml's
-- destinations; any other host is an error outcome naming it, in dry-run too.
describe("destinations #cli", function()
  local function webhook_with(mapping, yaml_edit)
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/webhook/. " .. dir .. "/")
    if mapping then S.write(dir .. "/event.lua", mapping) end
    if yaml_edit then
      local y = dir .. "/blueprint.yaml"
      S.write(y, yaml_edit(io.open(y):read("a")))
    end
    S.write(dir .. "/c.yaml", "url: https://hooks.example.com/signal\nconsent: {default_policy: allow}\n")
    return dir
  end
  local EVENT = '{"type":"identify","userId":"u1","messageId":"d1"}'
  local function dry_run(dir)
    local out, err, code = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. dir .. "/c.yaml", EVENT)
    assert.are.equal(0, code, err)
    return core.json_decode(S.lines(out)[1])
  end

  it("makes a request or a step to another host an error naming the host", function()
    local line = dry_run(webhook_with('return function(event, ctx)\n  return { url = "https://169.254.169.254/latest", json = {} }\nend\n'))
    assert.are.equal("error", line.outcome)
    assert.matches("the host '169.254.169.254' (port 443) is not a destination of this blueprint", line.reason, 1, true)
    assert.matches("url (hooks.example.com:443)", line.reason, 1, true)
    -- loopback only where the configured URL is: not through a step either
    line = dry_run(webhook_with('return function(event, ctx)\n  ctx.send({ method = "GET", url = "http://127.0.0.1:9/x" })\n'
      .. '  return { url = ctx.config.url, json = {} }\nend\n'))
    assert.are.equal("error", line.outcome)
    assert.matches("ctx.send: the host '127.0.0.1' (port 9)", line.reason, 1, true)
    -- a user name in the URL does not smuggle another host past the check
    line = dry_run(webhook_with('return function(event, ctx)\n  return { url = "https://hooks.example.com@evil.example/", json = {} }\nend\n'))
    assert.are.equal("error", line.outcome)
    assert.matches("a user name", line.reason, 1, true)
    -- the configured host (another path on it) is fine
    line = dry_run(webhook_with('return function(event, ctx)\n  return { url = "https://HOOKS.example.com/other", json = {} }\nend\n'))
    assert.are.equal("deliver", line.outcome)
  end)

  it("allows a declared fixed host over https only", function()
    local function with_host(y) return (y:gsub("  config: %[url%]\n", "  config: [url]\n  hosts: [api.example.org]\n", 1)) end
    local line = dry_run(webhook_with('return function(event, ctx)\n  return { url = "https://api.example.org/v1", json = {} }\nend\n', with_host))
    assert.are.equal("deliver", line.outcome)
    line = dry_run(webhook_with('return function(event, ctx)\n  return { url = "http://api.example.org/v1", json = {} }\nend\n', with_host))
    assert.are.equal("error", line.outcome)
  end)

  it("checks the destinations and sent_to keys strictly, naming file and line", function()
    local cases = {
      { function(y) return (y:gsub("  config: %[url%]\n", "  config: [url]\n  hostz: [a.example]\n", 1)) end,
        "unknown key 'hostz' in 'destinations' (known keys: config, hosts)" },
      { function(y) return (y:gsub("  config: %[url%]\n", "  config: [signature_header]\n", 1)) end,
        "destinations.config names 'signature_header', which is not a config field of type url" },
      { function(y) return (y:gsub("  config: %[url%]\n", "  config: [url]\n  hosts: [127.0.0.1]\n", 1)) end,
        "destinations.hosts: each must be a host name" },
      { function(y) return (y:gsub("  config: %[url%]\n", "  config: [url]\n  hosts: [localhost]\n", 1)) end,
        "destinations.hosts: each must be a host name" },
      { function(y) return (y:gsub("sent_to: %[url%]", "sent_to: [nope]", 1)) end,
        "sent_to names 'nope', which is not a config field of type url" },
      { function(y) return (y:gsub("    type: string\n", "    type: string\n    sent_to: [url]\n", 1)) end,
        "'sent_to' is for secret fields" },
    }
    for _, c in ipairs(cases) do
      local dir = webhook_with(nil, c[1])
      local _, err, code = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. dir .. "/c.yaml", EVENT)
      assert.are.equal(2, code)
      assert.matches(dir .. "/blueprint.yaml:%d+: ", err)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)
