-- Retention of `serve`'s event store: delivered events leave Live Events
-- once their window is over, a dead letter within its own (longer) window
-- stays, a held event is never pruned, the pruned counter rises, and the
-- options are checked strictly.  Windows in seconds; every wait polls
-- against a deadline.  Tagged #serve (the ThreadSanitizer build runs it too).
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

local function install_body(emu, name, api_key)
  return core.json_encode({
    name = name, variant = "default", delivery_mode = "server_side",
    config = {
      api_url = emu.url, api_key = api_key or S.EMU_TOKEN, event_tracking_account_id = "1000001",
      event_tracking_key = S.EMU_EVENT_KEY, event_tracking_url = emu.url .. "/event",
    },
  })
end

local function live(srv, id)
  local _, body = srv.call("GET", "/v1/admin/integrations/" .. id .. "/live-events?limit=100")
  return body
end

local function count(body, state)
  local n = 0
  for _, e in ipairs(body.events or {}) do if e.state == state then n = n + 1 end end
  return n
end

local function pruned_total(srv)
  local _, _, text = srv.call("GET", "/metrics", nil, false)
  return tonumber(text:match("blueprint_events_pruned_total (%d+)"))
end

describe("serve retention #serve #retention", function()
  it("prunes delivered events after their window, keeps a dead letter within its own and a held event always", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({ args = "--keep-delivered 2s --keep-dead 1h" })
    finally(function() srv.stop(); emu.stop() end)
    local _, good = srv.call("POST", INSTALL, install_body(emu, "Kept"))
    local _, bad = srv.call("POST", INSTALL, install_body(emu, "Wrong key", "not-the-key"))
    assert.is_string(good.id)
    assert.is_string(bad.id)
    srv.call("POST", "/v1/integrations/" .. good.id .. "/events",
      S.identify("kept-1@example.com", "kept-1") .. "\n" .. S.identify("nodot@localhost", "dead-1"))
    srv.call("POST", "/v1/integrations/" .. bad.id .. "/events", S.identify("held-1@example.com", "held-1"))

    -- both final outcomes are seen first, the held event too
    local first = S.eventually(function()
      local b = live(srv, good.id)
      return count(b, "delivered") == 1 and count(b, "dead") == 1 and b
    end, 20)
    assert.is_truthy(first, "the delivered event and the dead letter were not both listed")
    assert.is_truthy(S.eventually(function() return count(live(srv, bad.id), "held") == 1 end, 20),
      "the event with the wrong key was not held")

    -- Live Events says how far back it reaches
    assert.are.equal(2, first.retention.delivered_s)
    assert.are.equal(3600, first.retention.dead_letters_s)
    assert.is_number(first.retention.oldest_event_at)

    -- the delivered event goes; the dead letter (1h window) and the held event stay
    local after = S.eventually(function()
      local b = live(srv, good.id)
      return count(b, "delivered") == 0 and b
    end, 30)
    assert.is_truthy(after, "the delivered event was not pruned")
    assert.are.equal(1, count(after, "dead"))
    local _, dl = srv.call("GET", "/v1/admin/integrations/" .. good.id .. "/dead-letters")
    assert.are.equal("dead-1", dl.dead_letters[1].outcome.message_id)
    assert.is_truthy(pruned_total(srv) >= 1, "blueprint_events_pruned_total did not rise")
    -- a held event is older than the delivered window by now, and still there
    local held = live(srv, bad.id)
    assert.are.equal(1, count(held, "held"))
    assert.is_number(held.retention.oldest_event_at)

    local _, health = srv.call("GET", "/healthz", nil, false)
    assert.are.equal(2, health.retention.delivered_s)
    assert.is_number(health.store.bytes)
    assert.is_truthy(health.store.pruned >= 1)
    local _, _, metrics = srv.call("GET", "/metrics", nil, false)
    assert.matches("blueprint_store_bytes %d+", metrics)
  end)

  it("prunes dead letters after their own window, and says the defaults when not set", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({ args = "--keep-dead 2s" })
    finally(function() srv.stop(); emu.stop() end)
    local _, it = srv.call("POST", INSTALL, install_body(emu, "Dead"))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("nodot@localhost", "dead-2"))
    local b = S.eventually(function() local x = live(srv, it.id); return count(x, "dead") == 1 and x end, 20)
    assert.is_truthy(b, "no dead letter")
    assert.are.equal(7 * 86400, b.retention.delivered_s)
    assert.are.equal(2, b.retention.dead_letters_s)
    assert.is_truthy(S.eventually(function() return count(live(srv, it.id), "dead") == 0 end, 30),
      "the dead letter was not pruned after its window")
    assert.is_truthy(S.eventually(function() return pruned_total(srv) >= 1 end, 5))
  end)

  it("refuses a window that is not a duration, with a clear error and exit status 1", function()
    for _, bad in ipairs({ "7", "7x", "0s", "-5m", "1.5h", "7 d", "99999999999d", "" }) do
      for _, opt in ipairs({ "--keep-delivered", "--keep-dead" }) do
        local _, err, code = S.sh(S.bin .. " serve --port 0 --state " .. S.tmpdir() .. " " .. opt .. " '" .. bad .. "'")
        assert.are.equal(1, code, opt .. " " .. bad)
        assert.matches(opt .. " takes a duration such as 7d, 12h, 30m or 90s", err, 1, true)
      end
    end
    local help = S.sh(S.bin .. " serve --help")
    assert.matches("--keep-delivered DURATION", help, 1, true)
    assert.matches("--keep-dead DURATION", help, 1, true)
  end)
end)
