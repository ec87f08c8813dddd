-- `blueprint serve` end to end against the emulator: the README's install and
-- verification steps, auth, every error status, per-event enable, hot
-- reload, SIGTERM with nothing lost, and secrets.  Tagged #cli so it also
-- runs against the ASan/UBSan build.
local S = require("support")
local core = S.core

local function install_body(emu, name, overrides)
  local o = overrides or {}
  return core.json_encode({
    name = name or "ActiveCampaign",
    variant = o.variant or "default",
    delivery_mode = "server_side",
    config = o.config or {
      api_url = emu.url,
      api_key = o.api_key or S.EMU_TOKEN,
      event_tracking_account_id = "1000001",
      event_tracking_key = S.EMU_EVENT_KEY,
      event_tracking_url = emu.url .. "/event",
    },
  })
end

local function no_secrets(text)
  assert.is_nil(text:find(S.EMU_TOKEN, 1, true), "API key leaked")
  assert.is_nil(text:find(S.EMU_EVENT_KEY, 1, true), "event key leaked")
end

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

describe("blueprint serve #cli #serve", function()
  local emu, srv
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    srv = S.start_server()
  end)
  after_each(function()
    srv.stop()
    emu.stop()
  end)

  it("installs with the README's call, accepts events and shows them delivered with 200 in Live Events", function()
    local status, it = srv.call("POST", INSTALL, install_body(emu))
    assert.are.equal(201, status)
    assert.are.equal("activecampaign", it.vendor)
    assert.are.equal(1, it.revision)
    assert.are.equal("********", it.config.api_key)
    assert.are.equal(emu.url, it.config.api_url)
    assert.is_true(it.events.identify.enabled)
    local events = io.open("blueprints/activecampaign/examples/events.ndjson"):read("a")
    local st, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", events)
    assert.are.equal(202, st)               -- every example is an event (the malformed one has its own file)
    assert.are.equal(8, res.accepted)
    assert.are.same({}, res.errors)
    local live = S.eventually(function()
      local _, body = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=50&outcome=delivered")
      return #body.events >= 4 and body
    end, 10)
    assert.is_truthy(live, "events were not delivered")
    local ok200 = 0
    for _, e in ipairs(live.events) do
      assert.are.equal("delivered", e.outcome.outcome)
      assert.is_true(e.outcome.status == 200 or e.outcome.status == 201)   -- 201: contact created
      if e.outcome.status == 200 then ok200 = ok200 + 1 end
      assert.is_truthy(e.event.type)   -- the input event is shown with its outcome
      assert.are.equal("[redacted]", e.outcome.requests[1].headers["Api-Token"])
    end
    assert.are.equal(3, ok200)
    local contacts = emu.contacts()
    assert.are.equal(1, #contacts)
    assert.are.equal(3, #contacts[1].trackingLogs)   -- page, Product Viewed, Order Completed
    local _, drops = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=drop")
    assert.are.equal(4, #drops.events)   -- two custom events not enabled, consent denied, no email
    local _, _, metrics = srv.call("GET", "/metrics", nil, false)
    assert.matches("blueprint_events_in_total 8", metrics, 1, true)
    assert.matches("blueprint_events_delivered_total 4", metrics, 1, true)
    assert.matches('blueprint_events_dropped_total{reason="consent"} 1', metrics, 1, true)
    assert.matches("blueprint_vendor_latency_seconds_count", metrics, 1, true)
    -- the file with a malformed line, sent after them: the message counts what happened to the others
    local bad = io.open("blueprints/activecampaign/examples/malformed-line.ndjson"):read("a") .. events
    st, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", bad)
    assert.are.equal(400, st)
    assert.are.equal(1, res.accepted)
    assert.are.equal(8, res.duplicates)
    assert.are.equal("1 of 10 events were rejected; 1 accepted, 8 duplicates (already received, not stored again)",
      res.error.message)
  end)

  it("serves the catalog and health without secrets", function()
    local st, cat = srv.call("GET", "/v1/admin/integration-catalog")
    assert.are.equal(200, st)
    assert.are.equal("activecampaign", cat.integrations[1].vendor)
    local _, ac = srv.call("GET", "/v1/admin/integration-catalog/activecampaign")
    assert.are.equal("marketing", ac.consent_category)
    assert.are.equal("api_url", ac.config_fields[1].key)
    assert.are.equal(core.null, ac.load_error)
    local hs, health = srv.call("GET", "/healthz", nil, false)
    assert.are.equal(200, hs)
    assert.are.equal("ok", health.status)
  end)

  it("answers 401 INVALID_TOKEN to missing, malformed, expired and wrongly signed tokens", function()
    local other = S.tmpdir()
    local p = io.popen(S.bin .. " token --role admin --state " .. other)
    local foreign = p:read("l")
    p:close()
    local expired = srv.token("admin", "1s")
    S.sleep(1.2)
    for _, tok in ipairs({ false, "not-a-jwt", "a.b.c", foreign, expired }) do
      local st, body = srv.call("GET", "/v1/admin/integrations", nil, tok)
      assert.are.equal(401, st)
      assert.are.equal("INVALID_TOKEN", body.error.code)
    end
  end)

  it("lets viewers read and refuses them changes with 403", function()
    local viewer = srv.token("viewer")
    assert.are.equal(200, (srv.call("GET", "/v1/admin/integrations", nil, viewer)))
    local st, body = srv.call("POST", INSTALL, install_body(emu), viewer)
    assert.are.equal(403, st)
    assert.are.equal("FORBIDDEN", body.error.code)
    assert.are.equal(201, (srv.call("POST", INSTALL, install_body(emu), srv.token("editor"))))
  end)

  it("answers 400, 404, 409 and 422 with the problem named", function()
    local st, body = srv.call("POST", INSTALL, "{not json")
    assert.are.equal(400, st)
    assert.are.equal("BAD_REQUEST", body.error.code)
    st, body = srv.call("POST", "/v1/admin/integration-catalog/mailchimp/install", install_body(emu))
    assert.are.equal(404, st)
    st, body = srv.call("POST", INSTALL, install_body(emu, "X", { variant = "gold" }))
    assert.are.equal(404, st)
    assert.matches("variant 'gold'", body.error.message, 1, true)
    assert.are.equal(201, (srv.call("POST", INSTALL, install_body(emu))))
    st, body = srv.call("POST", INSTALL, install_body(emu))
    assert.are.equal(409, st)
    assert.are.equal("CONFLICT", body.error.code)
    st, body = srv.call("POST", INSTALL, install_body(emu, "Bad", { config = { api_url = "http://example.com", api_key = "k" } }))
    assert.are.equal(422, st)
    assert.are.equal("INVALID_CONFIG", body.error.code)
    assert.matches("api_url", body.error.message, 1, true)
    st = srv.call("GET", "/v1/admin/integrations/int_nope")
    assert.are.equal(404, st)
  end)

  it("enables a custom event with PATCH (a new revision) and then delivers it", function()
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    local ev = S.track_json("Webinar Registered", "w@example.com", '{"webinar":"W1"}', "w1")
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", ev)
    local dropped = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=drop")
      return #b.events == 1 and b.events[1]
    end)
    assert.matches("custom event not enabled", dropped.outcome.reason, 1, true)
    local st, patched = srv.call("PATCH", "/v1/admin/integrations/" .. it.id,
      '{"events":{"Webinar Registered":{"enabled":true}}}')
    assert.are.equal(200, st)
    assert.are.equal(2, patched.revision)
    assert.is_true(patched.events["Webinar Registered"].enabled)
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.track_json("Webinar Registered", "w@example.com", '{"webinar":"W1"}', "w2"))
    local logs = S.eventually(function()
      local c = emu.contacts()
      return #c == 1 and #c[1].trackingLogs == 1 and c[1].trackingLogs
    end)
    assert.are.equal("webinar_registered", logs[1].type)
    local _, revs = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/revisions")
    assert.are.equal(2, #revs.revisions)
    assert.are.equal("********", revs.revisions[1].config.api_key)
  end)

  it("streams Live Events as Server-Sent Events", function()
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    local out = os.tmpname()
    os.execute("curl -sN --max-time 3 -H 'Authorization: Bearer " .. srv.token("viewer") .. "' '" .. srv.url
      .. "/v1/admin/integrations/" .. it.id .. "/live-events/stream' > " .. out .. " 2>/dev/null &")
    S.sleep(0.3)
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("sse@example.com", "sse-1"))
    S.sleep(3)
    local text = io.open(out):read("a")
    os.remove(out)
    assert.matches("event: outcome\ndata: {", text, 1, true)
    assert.matches('"message_id":"sse-1"', text, 1, true)
    no_secrets(text)
  end)

  it("lists and replays dead letters", function()
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("nodot@localhost", "dead-1"))
    local dl = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/dead-letters")
      return #b.dead_letters == 1 and b
    end)
    assert.are.equal("dead-1", dl.dead_letters[1].outcome.message_id)
    local st, res = srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay", '{"all":true}')
    assert.are.equal(200, st)
    assert.are.equal(1, res.replayed)
  end)

  it("deletes an integration and refuses oversized intake bodies with 413", function()
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    local big = S.identify("big@example.com") .. "\n" .. string.rep(" ", 600 * 1024)
    local st, body = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", big)
    assert.are.equal(413, st)
    assert.are.equal("PAYLOAD_TOO_LARGE", body.error.code)
    assert.are.equal(204, (srv.call("DELETE", "/v1/admin/integrations/" .. it.id)))
    assert.are.equal(404, (srv.call("GET", "/v1/admin/integrations/" .. it.id)))
    local _, list = srv.call("GET", "/v1/admin/integrations")
    assert.are.equal(0, #list.integrations)
    assert.are.equal(201, (srv.call("POST", INSTALL, install_body(emu))))   -- the name is free again
  end)

  it("keeps secrets out of every response and log line", function()
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("sec@example.com"))
    S.eventually(function() return #emu.contacts() == 1 end)
    srv.call("GET", "/v1/admin/integrations/" .. it.id)
    srv.call("GET", "/v1/admin/integrations")
    srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events")
    srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/revisions")
    srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"config":{"api_key":"changed-secret-value"}}')
    for _, body in ipairs(srv.bodies) do
      no_secrets(body)
      assert.is_nil(body:find("changed-secret-value", 1, true))
    end
    no_secrets(srv.logs())
  end)
end)

describe("blueprint serve lifecycle #cli #serve", function()
  it("loses nothing when stopped with SIGTERM during delivery", function()
    local emu = S.start_emulator("--rate-limit 0")
    local state = S.tmpdir()
    -- one by one (--no-batch): 30 identifies would be one bulk import (batch_kill_spec kills those)
    local srv = S.start_server({ state = state, rate = 10, args = "--no-batch" })
    finally(function() srv.stop(); emu.stop() end)   -- busted keeps one finally per test
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    local input = {}
    for i = 1, 30 do input[#input + 1] = S.identify(("t%02d@example.com"):format(i), "t" .. i) end
    local st = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", table.concat(input, "\n"))
    assert.are.equal(202, st)
    S.eventually(function() return #emu.contacts() >= 3 end, 10)   -- stop it mid-delivery
    srv.stop()
    assert.matches('"msg":"shutting down', srv.logs(), 1, true)
    local before = #emu.contacts()
    assert.is_true(before < 30, "all were delivered before the stop; nothing was tested")
    srv = S.start_server({ state = state, rate = 50 })
    local all = S.eventually(function() return #emu.contacts() == 30 end, 10)
    assert.is_true(all, "after restart: " .. #emu.contacts() .. " of 30")
  end)

  it("hot-reloads an edited mapping and keeps the last good version when an edit is broken", function()
    local emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local srv = S.start_server({ blueprints = dir })
    finally(function() srv.stop(); emu.stop() end)
    local _, it = srv.call("POST", INSTALL, install_body(emu))
    local page = dir .. "/activecampaign/page.lua"
    local original = io.open(page):read("a")
    S.write(page, (original:gsub('"page_view"', '"page_view_v2"')))
    S.sleep(1)
    local function send(id)
      srv.call("POST", "/v1/integrations/" .. it.id .. "/events",
        '{"type":"page","messageId":"' .. id .. '","context":{"traits":{"email":"hr@example.com"},"consent":{"marketing":true}}}')
    end
    send("p1")
    local logs = S.eventually(function()
      local c = emu.contacts()
      return #c == 1 and #c[1].trackingLogs == 1 and c[1].trackingLogs
    end)
    assert.are.equal("page_view_v2", logs[1].type)
    S.write(page, "return function(event, ctx)\n  this is not lua\nend\n")
    S.sleep(1)
    local _, cat = srv.call("GET", "/v1/admin/integration-catalog/activecampaign")
    assert.matches("page.lua:2", cat.load_error, 1, true)
    local _, _, metrics = srv.call("GET", "/metrics", nil, false)
    assert.matches("blueprint_blueprint_reload_failures_total 1", metrics, 1, true)
    assert.matches("blueprint change rejected", srv.logs(), 1, true)
    send("p2")
    logs = S.eventually(function()
      local c = emu.contacts()
      return #c[1].trackingLogs == 2 and c[1].trackingLogs
    end)
    assert.are.equal("page_view_v2", logs[2].type)   -- the last good version still runs
  end)
end)

describe("serve: unknown keys in change bodies #serve", function()
  it("rejects a misspelled top-level key of an install or PATCH body with the known keys", function()
    local emu = S.start_emulator()
    local srv = S.start_server()
    finally(function() srv.stop(); emu.stop() end)
    local body = S.core.json_decode(S.install_body("typo", S.emulator_account(emu, 0)))
    body.consnet = { default_policy = "allow" }
    local st, r = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install", S.core.json_encode(body))
    assert.are.equal(422, st)
    assert.are.equal("INVALID_CONFIG", r.error.code)
    assert.matches("unknown key 'consnet' in the install body (known keys: name, variant, config, events, consent, "
      .. "delivery_mode)", r.error.message, nil, true)
    body.consnet = nil
    local _, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install", S.core.json_encode(body))
    st, r = srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"evnts":{"Webinar Registered":{"enabled":true}}}')
    assert.are.equal(422, st)
    assert.matches("unknown key 'evnts' in the update (PATCH) body (known keys: config, events, consent)",
      r.error.message, nil, true)
    local _, shown = srv.call("GET", "/v1/admin/integrations/" .. it.id)
    assert.are.equal(1, shown.revision)
  end)
end)
