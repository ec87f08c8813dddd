-- The default ActiveCampaign blueprint: every row of the event table, every
-- drop reason, consent shapes, envelope spellings, unicode and exactness.
local S = require("support")
local core = S.core

local function with_consent(ev, ctx)
  ev.context = ev.context or {}
  local c = ctx or S.granted()
  for k, v in pairs(c) do ev.context[k] = v end
  return ev
end

local function identify(traits) return with_consent({ type = "identify", messageId = "m-1", traits = traits }) end

local function track(name, props, email)
  return with_consent({ type = "track", event = name, messageId = "m-2", properties = props or {},
                        context = { traits = { email = email or "buyer@example.com" } } })
end

describe("identify", function()
  local e = S.engine()

  it("upserts the contact with contact/sync and the Api-Token header", function()
    local out = S.run(e, identify({ email = "Ada@Example.com", first_name = "Ada", last_name = "Lovelace", phone = "+1 555" }))
    assert.are.equal("deliver", out.outcome)
    assert.are.equal(1, #out.requests)
    local r = out.requests[1]
    assert.are.equal("POST", r.method)
    assert.are.equal("https://acme.api-us1.com/api/3/contact/sync", r.url)
    assert.are.equal("[redacted]", r.headers["Api-Token"])
    assert.are.equal("application/json", r.headers["Content-Type"])
    assert.are.equal("contact:ada@example.com", r.marks)   -- later events need not sync again
    assert.are.equal('{"contact":{"email":"ada@example.com","firstName":"Ada","lastName":"Lovelace","phone":"+1 555"}}', r.body)
  end)

  it("sends to the API URL as pasted with /api/3 or a trailing slash, never /api/3/api/3", function()
    for _, pasted in ipairs({ "https://acme.api-us1.com/api/3", "https://acme.api-us1.com/api/3/",
                              "https://acme.api-us1.com/", "https://acme.api-us1.com/API/3" }) do
      local pe = assert(core.open_text(S.AC, (S.base_config:gsub("api_url: [^\n]*", "api_url: " .. pasted))))
      local out = S.run(pe, identify({ email = "ada@example.com" }))
      assert.are.equal("https://acme.api-us1.com/api/3/contact/sync", out.requests[1].url, pasted)
    end
  end)

  it("trims and lower-cases the email", function()
    local out = S.run(e, identify({ email = "  MiXeD.Case@Example.ORG \t" }))
    assert.are.equal('{"contact":{"email":"mixed.case@example.org"}}', out.requests[1].body)
  end)

  it("leaves absent and empty fields out instead of sending them empty", function()
    local out = S.run(e, identify({ email = "a@b.co", first_name = "", phone = core.null }))
    assert.are.equal('{"contact":{"email":"a@b.co"}}', out.requests[1].body)
  end)

  it("falls back to context.traits.email, then properties.email", function()
    local ev = with_consent({ type = "identify", traits = {}, context = { traits = { email = "ctx@example.com" } } })
    assert.are.equal('{"contact":{"email":"ctx@example.com"}}', S.run(e, ev).requests[1].body)
    ev = with_consent({ type = "identify", properties = { email = "prop@example.com" } })
    assert.are.equal('{"contact":{"email":"prop@example.com"}}', S.run(e, ev).requests[1].body)
  end)

  it("drops without an email, saying ActiveCampaign identifies contacts by email", function()
    local out = S.run(e, identify({ first_name = "Nobody" }))
    assert.are.equal("drop", out.outcome)
    assert.matches("ActiveCampaign identifies contacts by email", out.reason)
    assert.are.equal(0, #out.requests)
  end)

  it("drops a value that is not an email", function()
    assert.are.equal("drop", S.run(e, identify({ email = "not-an-email" })).outcome)
  end)

  it("keeps unicode names exactly", function()
    local out = S.run(e, identify({ email = "zoe@example.com", first_name = "Zoë", last_name = "山田 🎉" }))
    assert.are.equal('{"contact":{"email":"zoe@example.com","firstName":"Zoë","lastName":"山田 🎉"}}', out.requests[1].body)
  end)

  it("writes the consent state to the configured contact field", function()
    local e2 = S.engine('consent_field_id: "7"\n')
    local out = S.run(e2, identify({ email = "a@b.co" }))
    assert.are.equal('{"contact":{"email":"a@b.co","fieldValues":[{"field":"7","value":"granted"}]}}', out.requests[1].body)
  end)

  it("delivers contact sync without Event Tracking configured", function()
    local e2 = assert(core.open_text(S.AC, "api_url: https://acme.api-us1.com\napi_key: k\n"))
    assert.are.equal("deliver", S.run(e2, identify({ email = "a@b.co" })).outcome)
  end)
end)

describe("page", function()
  local e = S.engine()

  it("sends Event Tracking page_view with URL and title, form-encoded", function()
    local ev = with_consent({ type = "page", name = "Pricing", messageId = "p-1",
      context = { page = { url = "https://shop.example.com/pricing?a=1&b=2", title = "Pricing & Plans" },
                  traits = { email = "V@Example.com" } } })
    local out = S.run(e, ev)
    assert.are.equal("deliver", out.outcome)
    -- first a look at Event Tracking's switch, then the contact sync (each
    -- skipped by delivery while its `once` key is fresh)
    assert.are.equal(3, #out.requests)
    assert.are.same({ "GET", "https://acme.api-us1.com/api/3/eventTracking", "event-tracking-on" },
      { out.requests[1].method, out.requests[1].url, out.requests[1].once })
    assert.are.equal("https://acme.api-us1.com/api/3/contact/sync", out.requests[2].url)
    assert.are.equal("contact:v@example.com", out.requests[2].once)
    assert.are.equal('{"contact":{"email":"v@example.com"}}', out.requests[2].body)
    local r = out.requests[3]
    assert.are.equal("https://trackcmp.net/event", r.url)
    assert.are.equal("application/x-www-form-urlencoded", r.headers["Content-Type"])
    assert.is_nil(r.headers["Api-Token"])
    local f = S.form(r.body)
    assert.are.equal("223344", f.actid)
    assert.are.equal("[redacted]", f.key)
    assert.are.equal("page_view", f.event)
    assert.are.equal('{"email":"v@example.com"}', f.visit)
    assert.are.equal('{"consent":"granted","name":"Pricing","title":"Pricing & Plans","url":"https://shop.example.com/pricing?a=1&b=2"}', f.eventdata)
    assert.are.equal("p-1", out.message_id)
    assert.are.equal("Pricing", out.event)
  end)

  it("drops without an email", function()
    local out = S.run(e, with_consent({ type = "page", context = { page = { url = "https://x.example" } } }))
    assert.are.equal("drop", out.outcome)
    assert.matches("identifies contacts by email", out.reason)
  end)
end)

describe("Product Viewed", function()
  local e = S.engine()
  it("sends product_viewed with product id, name and price", function()
    local out = S.run(e, track("Product Viewed", { product_id = "sku-1", name = "Crème brûlée", price = 19.99, currency = "EUR" }))
    local f = S.form(S.tracked(out).body)
    assert.are.equal("product_viewed", f.event)
    assert.are.equal('{"consent":"granted","currency":"EUR","name":"Crème brûlée","price":19.99,"product_id":"sku-1"}', f.eventdata)
  end)
end)

describe("Order Completed", function()
  local e = S.engine()

  it("sends purchase with order id, revenue and currency; the 19-digit id survives", function()
    local ev = '{"type":"track","event":"Order Completed","properties":{"order_id":1234567890123456789,"revenue":0.1,"currency":"USD"},'
      .. '"context":{"traits":{"email":"b@example.com"},"consent":{"canonical":{"marketing":true}}}}'
    local f = S.form(S.tracked(S.run(e, ev)).body)
    assert.are.equal("purchase", f.event)
    assert.are.equal('{"consent":"granted","currency":"USD","order_id":1234567890123456789,"revenue":0.1}', f.eventdata)
  end)

  it("uses total when revenue is absent", function()
    local f = S.form(S.tracked(S.run(e, track("Order Completed", { order_id = "A-1", total = 42.5, currency = "GBP" }))).body)
    assert.are.equal('{"consent":"granted","currency":"GBP","order_id":"A-1","revenue":42.5}', f.eventdata)
  end)

  it("keeps ids beyond 64 bits exactly", function()
    local ev = '{"type":"track","event":"Order Completed","properties":{"order_id":123456789012345678901234567890,"revenue":1},'
      .. '"context":{"traits":{"email":"b@example.com"},"consent":{"marketing":true}}}'
    local f = S.form(S.tracked(S.run(e, ev)).body)
    assert.matches('"order_id":123456789012345678901234567890', f.eventdata, 1, true)
  end)
end)

describe("custom events", function()
  it("are dropped until enabled", function()
    local out = S.run(S.engine(), track("Webinar Registered", { webinar = "W1" }))
    assert.are.equal("drop", out.outcome)
    assert.matches("custom event not enabled", out.reason)
    assert.matches("Webinar Registered", out.reason)
  end)

  it("are sent in snake_case with the properties as eventdata once enabled", function()
    local e = S.engine('events:\n  "Webinar Registered": {enabled: true}\n')
    local out = S.run(e, track("Webinar Registered", { webinar = "W1", seats = core.array(), meta = {} }))
    assert.are.equal("deliver", out.outcome)
    local f = S.form(S.tracked(out).body)
    assert.are.equal("webinar_registered", f.event)
    assert.are.equal('{"consent":"granted","meta":{},"seats":[],"webinar":"W1"}', f.eventdata)
  end)

  it("refuse an envelope whose properties, traits or context is not an object, in the core", function()
    local e = S.engine('events:\n  "Webinar Registered": {enabled: true}\n')
    local ev = track("Webinar Registered")
    ev.properties = "oops"
    local out = S.run(e, ev)
    assert.are.equal("error", out.outcome)
    assert.are.equal('malformed event: "properties" must be an object (got a string)', out.reason)
    ev.properties, ev.context = nil, core.array()
    out = S.run(e, ev)
    assert.are.equal('malformed event: "context" must be an object (got an array)', out.reason)
    ev.context, ev.traits = nil, 7
    assert.matches('"traits" must be an object %(got a number%)', S.run(e, ev).reason)
  end)

  it("cut names to 32 characters and transliterate accents", function()
    local e = S.engine('events:\n  "A Very Long Custom Event Name That Goes On": {enabled: true}\n  "Anmeldung für Café": {enabled: true}\n  "注文完了": {enabled: true}\n')
    local f = S.form(S.tracked(S.run(e, track("A Very Long Custom Event Name That Goes On"))).body)
    assert.are.equal("a_very_long_custom_event_name_th", f.event)
    assert.are.equal(32, #f.event)
    f = S.form(S.tracked(S.run(e, track("Anmeldung für Café"))).body)
    assert.are.equal("anmeldung_fur_cafe", f.event)
    local out = S.run(e, track("注文完了"))
    assert.are.equal("drop", out.outcome)
    assert.matches("no letters or digits", out.reason)
  end)

  it("can disable a listed event through the config", function()
    local e = S.engine('events:\n  "Order Completed": {enabled: false}\n')
    local out = S.run(e, track("Order Completed", { order_id = 1 }))
    assert.are.equal("drop", out.outcome)
    assert.matches("disabled in the config", out.reason)
  end)
end)

describe("form encoding", function()
  it("writes computed floats in their shortest exact form", function()
    local dir = S.tmpdir()
    S.write(dir .. "/blueprint.yaml", "vendor: t\nname: T\ncategory: c\nstatus: alpha\nconsent_category: marketing\n"
      .. "config:\n  - {key: api_url, type: url, required: true}\nevents:\n  page: {type: page, mapping: m.lua}\n")
    S.write(dir .. "/m.lua", "return function(event, ctx)\n  return { url = ctx.config.api_url, form = { a = 0.1 + 0.2, b = 19.99, c = 3, d = 2.0 } }\nend\n")
    local e = assert(core.open_text(dir, "api_url: https://x.example\nconsent: {default_policy: allow}\n"))
    assert.are.equal("a=0.30000000000000004&b=19.99&c=3&d=2.0", S.run(e, '{"type":"page"}').requests[1].body)
  end)
end)

describe("Event Tracking not configured", function()
  local e = assert(core.open_text(S.AC, "api_url: https://acme.api-us1.com\napi_key: k\n"))
  for _, ev in ipairs({ track("Order Completed", { order_id = 1 }), track("Product Viewed", {}),
                        with_consent({ type = "page", context = { traits = { email = "a@b.co" } } }) }) do
    it("drops " .. (ev.event or ev.type) .. " naming both fields", function()
      local out = S.run(e, ev)
      assert.are.equal("drop", out.outcome)
      assert.matches("event_tracking_account_id", out.reason)
      assert.matches("event_tracking_key", out.reason)
    end)
  end
end)

describe("consent", function()
  for _, shape in ipairs({ "canonical", "categories", "flat" }) do
    it("drops when marketing is denied in the " .. shape .. " shape", function()
      local out = S.run(S.engine(), with_consent(identify({ email = "a@b.co" }), S.consent(shape, false)))
      assert.are.equal("drop", out.outcome)
      assert.matches("^consent: marketing denied", out.reason)
    end)
    it("delivers when marketing is granted in the " .. shape .. " shape", function()
      local out = S.run(S.engine(), with_consent(identify({ email = "a@b.co" }), S.consent(shape, "granted")))
      assert.are.equal("deliver", out.outcome)
    end)
  end

  it("prefers the canonical shape over older ones", function()
    local ev = identify({ email = "a@b.co" })
    ev.context.consent = { canonical = { marketing = false }, categories = { marketing = true }, marketing = true }
    assert.are.equal("drop", S.run(S.engine(), ev).outcome)
  end)

  it("applies default_policy deny when consent is absent, and says so", function()
    local ev = { type = "identify", traits = { email = "a@b.co" } }
    local out = S.run(S.engine(), ev)
    assert.are.equal("drop", out.outcome)
    assert.matches("default_policy is deny", out.reason)
  end)

  it("applies default_policy allow and forwards the unknown state", function()
    local e = S.engine("consent:\n  default_policy: allow\n")
    local ev = { type = "track", event = "Product Viewed", properties = { product_id = "p" }, context = { traits = { email = "a@b.co" } } }
    local out = S.run(e, ev)
    assert.are.equal("deliver", out.outcome)
    assert.matches('"consent":"unknown"', S.form(S.tracked(out).body).eventdata, 1, true)
  end)

  it("treats an unrecognised value as denied", function()
    local out = S.run(S.engine(), with_consent(identify({ email = "a@b.co" }), S.consent("canonical", "maybe")))
    assert.are.equal("drop", out.outcome)
    assert.matches("unrecognised", out.reason)
  end)
end)

describe("envelope spellings", function()
  it("accepts messageId, message_id and event_id", function()
    local e = S.engine()
    for _, key in ipairs({ "messageId", "message_id", "event_id" }) do
      local ev = identify({ email = "a@b.co" })
      ev.messageId = nil
      ev[key] = "id-" .. key
      assert.are.equal("id-" .. key, S.run(e, ev).message_id)
    end
  end)

  it("lets mappings read userId and user_id interchangeably", function()
    local dir = S.tmpdir()
    S.write(dir .. "/blueprint.yaml", "vendor: t\nname: T\ncategory: c\nstatus: alpha\nconsent_category: marketing\n"
      .. "config:\n  - {key: api_url, type: url, required: true}\nevents:\n  identify: {type: identify, mapping: m.lua}\n")
    S.write(dir .. "/m.lua", "return function(event, ctx)\n  return { url = ctx.config.api_url, json = { a = event.userId, b = event.user_id, c = event.anonymousId } }\nend\n")
    local e = assert(core.open_text(dir, "api_url: https://x.example\nconsent: {default_policy: allow}\n"))
    local out = S.run(e, '{"type":"identify","user_id":"u1","anonymous_id":"an1"}')
    assert.are.equal('{"a":"u1","b":"u1","c":"an1"}', out.requests[1].body)
    out = S.run(e, '{"type":"identify","userId":"u2"}')
    assert.are.equal('{"a":"u2","b":"u2"}', out.requests[1].body)
  end)
end)

describe("eventdata length limit", function()
  it("drops the largest non-identifying fields first and lists them", function()
    local e = S.engine('events:\n  "Big Event": {enabled: true}\n')
    local props = { order_id = 9007199254740993, note = string.rep("n", 600), blob = string.rep("b", 900), small = 1 }
    local ev = track("Big Event", props)
    local f = S.form(S.tracked(S.run(e, ev)).body)
    assert.is_true(#f.eventdata <= 1024)
    local data = assert(core.json_decode(f.eventdata))
    assert.are.equal("granted", data.consent)
    assert.are.equal(9007199254740993, data.order_id)
    assert.are.equal(1, data.small)
    assert.are.equal("blob", data._truncated[1])
  end)

  it("never drops the identifying fields of an order", function()
    local e = S.engine()
    local f = S.form(S.tracked(S.run(e, track("Order Completed", { order_id = "o-1", revenue = 1, currency = string.rep("X", 1500) }))).body)
    local data = assert(core.json_decode(f.eventdata))
    assert.are.equal("o-1", data.order_id)
    assert.are.equal(1500, #data.currency)
  end)
end)

describe("secrets", function()
  it("never appear in dry-run output", function()
    local e = S.engine('events:\n  "X": {enabled: true}\n')
    for _, ev in ipairs({ identify({ email = "a@b.co" }), track("Order Completed", { order_id = 1 }), track("X", {}) }) do
      local out = S.run(e, ev)
      assert.are.equal("deliver", out.outcome)
      assert.is_nil(out._line:find(S.API_KEY, 1, true))
      assert.is_nil(out._line:find(S.TRACK_KEY, 1, true))
      assert.matches("[redacted]", out._line, 1, true)
    end
  end)
end)

describe("malformed events", function()
  local e = S.engine()
  local cases = {
    { "{", "invalid JSON" }, { "[1,2]", "must be a JSON object" }, { '{"event":"x"}', 'no "type"' },
    { '{"type":"track"}', 'needs an "event" name' }, { '{"type":"alias"}', "unknown type 'alias'" },
    { '{"type":"track","event":"Order Completed","properties":{"x":"\xff"}}', "UTF-8" },
  }
  for _, c in ipairs(cases) do
    it("gives an error outcome for " .. c[1], function()
      local out = S.run(e, c[1])
      assert.are.equal("error", out.outcome)
      assert.matches(c[2], out.reason, 1, true)
    end)
  end

  it("drops group and screen events that the blueprint does not map", function()
    local out = S.run(e, with_consent({ type = "group", groupId = "g" }))
    assert.are.equal("drop", out.outcome)
    assert.matches("'group' events are not mapped", out.reason)
  end)

  it("rejects events over the size limit", function()
    local small = S.engine(nil, { max_event_bytes = 100 })
    local out = S.run(small, track("Order Completed", { pad = string.rep("p", 200) }))
    assert.are.equal("error", out.outcome)
    assert.matches("too large", out.reason)
  end)
end)

-- Lists follow consent, but a contact who unsubscribed is subscribed again
-- only when consent was granted after that unsubscribe (dry-run: one engine,
-- its ctx.cache remembers the contact between the two events).
describe("lists and a contact's unsubscribes", function()
  it("re-subscribes (sourceid 4) a list left before the contact was last seen without consent, not one left after", function()
    local dir = S.tmpdir()
    finally(function() os.execute("rm -rf " .. dir) end)
    S.write(dir .. "/config.yaml", "name: ActiveCampaign\nconfig:\n  api_url: https://acme.api-us1.com\n"
      .. "  api_key: test-api-key\n  lists: [1, 2]\nconsent:\n  default_policy: allow\n")
    S.write(dir .. "/answers.yaml", table.concat({
      "- method: GET", "  path: /api/3/contacts/*/contactLists", "  status: 200",
      '  json: {"contactLists": [{"contact": "113", "list": "1", "status": "2", "udate": "2026-12-05T10:00:00-06:00"},',
      '                          {"contact": "113", "list": "2", "status": "2", "udate": "2026-12-06T13:00:00Z"}]}', "" }, "\n"))
    local events = table.concat({
      -- seen without consent on Dec 6 at noon
      core.json_encode({ type = "identify", messageId = "a1", timestamp = "2026-12-06T12:00:00Z",
                         traits = { email = "u@example.com" } }),
      -- grants it the next day
      core.json_encode({ type = "identify", messageId = "a2", timestamp = "2026-12-07T09:00:00Z",
                         traits = { email = "u@example.com" }, context = { consent = { marketing = true } } }),
    }, "\n") .. "\n"
    local out = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. dir .. "/config.yaml --answers " .. dir
      .. "/answers.yaml 2>/dev/null", events)
    local lines = S.lines(out)
    assert.are.equal(1, #core.json_decode(lines[1]).requests)   -- unknown consent: the sync alone
    local lists = {}
    for _, r in ipairs(core.json_decode(lines[2]).requests) do
      if r.url:match("/api/3/contactLists$") then lists[#lists + 1] = r.body end
    end
    -- list 1 was left on Dec 5, before Dec 6 noon: consent came after; list 2 was left after it
    assert.are.same({ '{"contactList":{"contact":"113","list":"1","sourceid":4,"status":1}}' }, lists)
  end)
end)
