-- An integration's health in the API and /metrics: delivering, paused for
-- credentials with the vendor's words, delivering again after the key is
-- fixed (the held events delivered), backing off on the vendor's 429, and
-- blueprint_error when its blueprint does not load.  Counts say their
-- window: since the server started, and the last hour.  Tagged #cli so it
-- also runs against the ASan/UBSan build, #serve for TSan.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

local function install(srv, emu)
  local st, it = srv.call("POST", INSTALL, core.json_encode({
    name = "Health", variant = "default", delivery_mode = "server_side",
    config = { api_url = emu.url, api_key = S.EMU_TOKEN },
  }))
  assert.are.equal(201, st, type(it) == "table" and core.json_encode(it) or it)
  return it
end

local function send(srv, it, email, id)
  local st, body = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify(email, id))
  assert.are.equal(202, st, type(body) == "table" and core.json_encode(body) or body)
end

-- the integration once its health is `state` (and `check` holds), else an error naming what it was
local function health_becomes(srv, it, state, seconds, check)
  local last
  local got = S.eventually(function()
    local _, body = srv.call("GET", "/v1/admin/integrations/" .. it.id)
    last = body
    return type(body) == "table" and body.health and body.health.state == state and (not check or check(body)) and body
  end, seconds or 10)
  assert(got, "health never became " .. state .. "; last: " .. core.json_encode(last and last.health or last))
  return got
end

describe("integration health #cli #serve", function()
  local emu, srv
  after_each(function()
    if srv then srv.stop() end
    if emu then emu.stop() end
    srv, emu = nil, nil
  end)

  it("is paused with the vendor's words after a wrong key, and delivering again with the held events sent after the fix", function()
    emu = S.start_emulator("--rate-limit 0")
    srv = S.start_server()
    local it = install(srv, emu)
    assert.are.equal("idle", it.health.state)
    send(srv, it, "health.one@example.com", "h-1")
    health_becomes(srv, it, "delivering")

    local before = os.time() * 1000
    local st = srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"config":{"api_key":"not-the-key"}}')
    assert.are.equal(200, st)
    send(srv, it, "health.two@example.com", "h-2")
    -- paused on the answer; the event is moved to held just after it (and the
    -- first one's delivered outcome may still be on its way to the store)
    local paused = health_becomes(srv, it, "paused", 10,
      function(b) return b.now and b.now.held == 1 and b.now.waiting == 0 end)
    assert.matches("HTTP 403", paused.health.reason, 1, true)
    -- the vendor's own words: its status and answer
    assert.are.equal(403, paused.health.vendor_status)
    assert.matches("No Result found for Subscriber", paused.health.vendor_answer, 1, true)
    assert.matches("delivery resumes when the credentials in the config change", paused.health.reason, 1, true)
    assert.is_true(paused.health.since >= before - 1000 and paused.health.since <= os.time() * 1000 + 1000, tostring(paused.health.since))
    assert.are.equal(core.null, paused.health["until"])
    assert.is_nil(paused.health.reason:find("not-the-key", 1, true), "the key is in the reason")
    assert.are.equal(1, paused.delivery.held)
    assert.are.equal(1, paused.delivery.last_hour.held)
    assert.are.same({ held = 1, waiting = 0, dead_letters = 0 }, paused.now)
    local _, list = srv.call("GET", "/v1/admin/integrations")
    assert.are.equal("paused", list.integrations[1].health.state)
    local _, _, metrics = srv.call("GET", "/metrics")
    assert.matches('blueprint_integrations_health{state="paused"} 1', metrics, 1, true)
    assert.matches('blueprint_integrations_health{state="delivering"} 0', metrics, 1, true)

    st = srv.call("PATCH", "/v1/admin/integrations/" .. it.id, core.json_encode({ config = { api_key = S.EMU_TOKEN } }))
    assert.are.equal(200, st)
    local back = health_becomes(srv, it, "delivering", 10,
      function(b) return b.delivery.delivered >= 2 and b.now and b.now.held == 0 and b.now.waiting == 0 end)
    assert.are.equal("", back.health.reason)
    assert.are.equal(core.null, back.health.vendor_status)
    local _, held = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=held")
    assert.are.same({}, held.events, "events are still held")
    -- the count since start keeps the episode; what is held now settles
    assert.are.equal(1, back.delivery.held)
    assert.are.same({ held = 0, waiting = 0, dead_letters = 0 }, back.now)
    -- the counts say their window: since the server started, and the last hour
    assert.is_true(back.delivery.counted_since <= before + 1000 and back.delivery.counted_since >= before - 60000)
    assert.are.equal(back.delivery.delivered, back.delivery.last_hour.delivered)
    _, _, metrics = srv.call("GET", "/metrics")
    assert.matches('blueprint_integrations_health{state="delivering"} 1', metrics, 1, true)
    assert.matches('blueprint_integrations_health{state="paused"} 0', metrics, 1, true)
  end)

  it("is backing_off until the next attempt after the vendor's 429, then delivering", function()
    emu = S.start_emulator("--rate-limit 0")
    srv = S.start_server({ retry_base_ms = 3000 })
    local it = install(srv, emu)
    emu.faults({ fail_next = 1, status = 429, retry_after = 2 })
    local before = os.time() * 1000
    send(srv, it, "health.429@example.com", "h-429")
    local b = health_becomes(srv, it, "backing_off", 10)
    assert.matches("429", b.health.reason, 1, true)
    assert.are.equal(429, b.health.vendor_status)
    assert.is_true(b.health["until"] >= before + 2000, "until " .. tostring(b.health["until"]) .. " is before Retry-After")
    local _, _, metrics = srv.call("GET", "/metrics")
    assert.matches('blueprint_integrations_health{state="backing_off"} 1', metrics, 1, true)
    health_becomes(srv, it, "delivering", 15)
  end)

  it("is blueprint_error, with the load error, when its blueprint does not load", function()
    emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    assert(os.execute("cp -r blueprints/activecampaign " .. dir .. "/"))
    local state = S.tmpdir()
    srv = S.start_server({ blueprints = dir, state = state })
    local it = install(srv, emu)
    srv.stop()
    -- a syntax error in a mapping: the blueprint does not load at the next start
    local f = assert(io.open(dir .. "/activecampaign/identify.lua", "a"))
    f:write("\nthis is not lua\n")
    f:close()
    srv = S.start_server({ blueprints = dir, state = state })
    local _, got = srv.call("GET", "/v1/admin/integrations/" .. it.id)
    assert.are.equal("blueprint_error", got.health.state, core.json_encode(got.health))
    assert.matches("identify.lua", got.health.reason, 1, true)
    local _, _, metrics = srv.call("GET", "/metrics")
    assert.matches('blueprint_integrations_health{state="blueprint_error"} 1', metrics, 1, true)
  end)

  -- before, such an integration vanished: /healthz 200 and intake 404 as if
  -- it had never been installed, the reason only in the log
  it("is named in /healthz (503) and its intake answers 503, never 404, when its blueprint's folder is gone", function()
    emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    assert(os.execute("cp -r blueprints/activecampaign " .. dir .. "/"))
    local state = S.tmpdir()
    srv = S.start_server({ blueprints = dir, state = state })
    local it = install(srv, emu)
    srv.stop()
    assert(os.execute("mv " .. dir .. "/activecampaign " .. dir .. "/../ac-away-" .. it.id))
    srv = S.start_server({ blueprints = dir, state = state })
    local st, h = srv.call("GET", "/healthz", nil, false)
    assert.are.equal(503, st, core.json_encode(h))
    assert.are.equal("unhealthy", h.status)
    assert.are.equal(1, #h.unopened)
    assert.are.equal(it.id, h.unopened[1].integration)
    assert.are.equal("blueprint_missing", h.unopened[1].reason)
    assert.matches("no blueprint for the integration's vendor 'activecampaign'", h.unopened[1].message, 1, true)
    local body
    st, body = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("away@example.com", "away-1"))
    assert.are.equal(503, st, core.json_encode(body))
    assert.are.equal("INTEGRATION_UNAVAILABLE", body.error.code)
    assert.matches("no blueprint for the integration's vendor", body.error.message, 1, true)
    assert.matches("nothing was accepted", body.error.message, 1, true)
    -- an id never installed is still 404
    assert.are.equal(404, (srv.call("POST", "/v1/integrations/int_0000000000000000/events", S.identify("x@example.com", "x-1"))))
    srv.stop()
    -- the folder back: open again, ready, taking events
    assert(os.execute("mv " .. dir .. "/../ac-away-" .. it.id .. " " .. dir .. "/activecampaign"))
    srv = S.start_server({ blueprints = dir, state = state })
    st, h = srv.call("GET", "/healthz", nil, false)
    assert.are.equal(200, st, core.json_encode(h))
    assert.are.equal(0, #h.unopened)
    send(srv, it, "back@example.com", "back-1")
  end)
end)
