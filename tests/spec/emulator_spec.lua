-- The ActiveCampaign emulator itself: the vendor behaviours the delivery
-- tests rely on (DESIGN.md §6).  Talks to it with curl on 127.0.0.1.
local S = require("support")

local function call(emu, method, path, body, headers)
  local f = os.tmpname()
  S.write(f, body or "")
  local h = ""
  for k, v in pairs(headers or {}) do h = h .. " -H '" .. k .. ": " .. v .. "'" end
  local p = io.popen("curl -s -D " .. f .. ".h -o " .. f .. ".b -w '%{http_code}' -X " .. method .. h
    .. (body and (" --data-binary @" .. f) or "") .. " " .. emu.url .. path)
  local status = tonumber(p:read("a"))
  p:close()
  local function slurp(path)
    local fh = io.open(path)
    if not fh then return "" end   -- no answer at all (connection reset)
    local text = fh:read("a")
    fh:close()
    return text
  end
  local b, hd = slurp(f .. ".b"), slurp(f .. ".h")
  os.remove(f); os.remove(f .. ".b"); os.remove(f .. ".h")
  return status, b, hd
end

local TOKEN = { ["Api-Token"] = S.EMU_TOKEN, ["Content-Type"] = "application/json" }
local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }

describe("the ActiveCampaign emulator #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  it("creates then updates a contact with contact/sync (case-insensitive email)", function()
    local s1 = call(emu, "POST", "/api/3/contact/sync", '{"contact":{"email":"A@B.co","firstName":"A"}}', TOKEN)
    local s2, body = call(emu, "POST", "/api/3/contact/sync", '{"contact":{"email":"a@b.CO","lastName":"L"}}', TOKEN)
    assert.are.equal(201, s1)
    assert.are.equal(200, s2)
    local c = S.core.json_decode(body).contact
    assert.are.equal("A", c.firstName)
    assert.are.equal("L", c.lastName)
  end)

  it("refuses a duplicate and an invalid email on POST /api/3/contacts with 422", function()
    assert.are.equal(201, (call(emu, "POST", "/api/3/contacts", '{"contact":{"email":"d@b.co"}}', TOKEN)))
    local s, body = call(emu, "POST", "/api/3/contacts", '{"contact":{"email":"D@b.co"}}', TOKEN)
    assert.are.equal(422, s)
    assert.are.equal("duplicate", S.core.json_decode(body).errors[1].code)
    s, body = call(emu, "POST", "/api/3/contacts", '{"contact":{"email":"nope"}}', TOKEN)
    assert.are.equal(422, s)
    assert.are.equal("email_invalid", S.core.json_decode(body).errors[1].code)
  end)

  it("answers 403 to a wrong or missing Api-Token", function()
    assert.are.equal(403, (call(emu, "GET", "/api/3/contacts", nil, { ["Api-Token"] = "wrong" })))
    assert.are.equal(403, (call(emu, "GET", "/api/3/contacts")))
  end)

  it("accepts Event Tracking only form-encoded and with the right key", function()
    local _, body = call(emu, "POST", "/event", '{"actid":"1000001"}', { ["Content-Type"] = "application/json" })
    assert.are.equal('{"success":0,"message":"An account ID must be provided."}', body)
    _, body = call(emu, "POST", "/event", "actid=1000001&key=bad&event=x&visit=%7B%7D", FORM)
    assert.matches('"success":0', body, 1, true)
    call(emu, "POST", "/api/3/contact/sync", '{"contact":{"email":"t@b.co"}}', TOKEN)
    _, body = call(emu, "POST", "/event", "actid=1000001&key=" .. S.EMU_EVENT_KEY
      .. "&event=purchase&eventdata=%7B%22a%22%3A1%7D&visit=%7B%22email%22%3A%22t%40b.co%22%7D", FORM)
    assert.are.equal('{"success":1,"message":"Event spawned"}', body)
    local s, logs = call(emu, "GET", "/api/3/contacts/1/trackingLogs", nil, TOKEN)
    assert.are.equal(200, s)
    assert.are.equal("purchase", S.core.json_decode(logs).trackingLogs[1].type)
  end)

  it("limits each account to 5 requests/second with 429, Retry-After and RateLimit headers", function()
    emu.faults({ rate_limit = 5 })
    local statuses, last_headers = {}, ""
    for i = 1, 7 do
      local s, _, h = call(emu, "GET", "/api/3/contacts", nil, TOKEN)
      statuses[i] = s
      last_headers = h
    end
    assert.are.same({ 200, 200, 200, 200, 200, 429, 429 }, statuses)
    assert.matches("Retry%-After: %d", last_headers)
    assert.matches("RateLimit%-Limit: 5", last_headers)
    assert.matches("RateLimit%-Remaining: 0", last_headers)
  end)

  it("injects failures with CDN-style HTML bodies, login pages and resets", function()
    emu.faults({ fail_next = 1, status = 504, html = true })
    local s, body = call(emu, "GET", "/api/3/contacts", nil, TOKEN)
    assert.are.equal(504, s)
    assert.matches("<html>", body, 1, true)
    emu.faults({ login_html_next = 1 })
    s, body = call(emu, "GET", "/api/3/contacts", nil, TOKEN)
    assert.are.equal(200, s)
    assert.matches("Login", body, 1, true)
    emu.faults({ reset_next = 1 })
    s = call(emu, "GET", "/api/3/contacts", nil, TOKEN)
    assert.are.equal(0, s)   -- no HTTP answer at all
    assert.are.equal(200, (call(emu, "GET", "/api/3/contacts", nil, TOKEN)))
  end)

  it("keeps the event tracking settings and event names", function()
    call(emu, "PUT", "/api/3/eventTracking", '{"eventTracking":{"enabled":true}}', TOKEN)
    local _, body = call(emu, "GET", "/api/3/eventTracking", nil, TOKEN)
    assert.is_true(S.core.json_decode(body).eventTracking.enabled)
    assert.are.equal(201, (call(emu, "POST", "/api/3/eventTrackingEvents", '{"eventTrackingEvent":{"name":"purchase"}}', TOKEN)))
    _, body = call(emu, "GET", "/api/3/eventTrackingEvents", nil, TOKEN)
    assert.are.equal("purchase", S.core.json_decode(body).eventTrackingEvents[1])
  end)

  it("records every request for inspection", function()
    call(emu, "GET", "/api/3/contacts", nil, TOKEN)
    local reqs = emu.requests()
    assert.are.equal(1, #reqs)
    assert.are.equal("/api/3/contacts", reqs[1].path)
    assert.are.equal(200, reqs[1].status)
  end)
end)
