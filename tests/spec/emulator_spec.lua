-- The ActiveCampaign emulator itself: the vendor behaviours the delivery
-- tests rely on (docs/activecampaign.md).  Talks to it with curl on 127.0.0.1.
local S = require("support")

local function call(emu, method, path, body, headers)
  local f = os.tmpname()
  S.write(f, body or "")
  local h = ""
  for k, v in pairs(headers or {}) do h = h .. " -H '" .. k .. ": " .. v .. "'" end
  -- -g: filters[...] in a URL is sent as written, not a curl glob
  local p = io.popen("curl -s -g -D " .. f .. ".h -o " .. f .. ".b -w '%{http_code}' -X " .. method .. h
    .. (body and (" --data-binary @" .. f) or "") .. " '" .. emu.url .. path .. "'")
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

  it("honours the account's Event Tracking switch: while off, /event records nothing", function()
    local _, body = call(emu, "GET", "/api/3/eventTracking", nil, TOKEN)
    assert.is_true(S.core.json_decode(body).eventTracking.enabled)   -- on until switched off
    call(emu, "POST", "/api/3/contact/sync", '{"contact":{"email":"t@b.co"}}', TOKEN)
    call(emu, "PUT", "/api/3/eventTracking", '{"eventTracking":{"enabled":false}}', TOKEN)
    _, body = call(emu, "GET", "/api/3/eventTracking", nil, TOKEN)
    assert.is_false(S.core.json_decode(body).eventTracking.enabled)
    local event = "actid=1000001&key=" .. S.EMU_EVENT_KEY .. "&event=purchase&visit=%7B%22email%22%3A%22t%40b.co%22%7D"
    -- the reference does not say what /event answers while off: by default
    -- the worst case (accepted, never recorded), or on request a refusal
    _, body = call(emu, "POST", "/event", event, FORM)
    assert.are.equal('{"success":1,"message":"Event spawned"}', body)
    emu.faults({ tracking_off = "refuse" })
    _, body = call(emu, "POST", "/event", event, FORM)
    assert.are.equal('{"success":0,"message":"Event tracking is disabled."}', body)
    _, body = call(emu, "GET", "/api/3/contacts/1/trackingLogs", nil, TOKEN)
    assert.are.same({}, S.core.json_decode(body).trackingLogs)
    call(emu, "PUT", "/api/3/eventTracking", '{"eventTracking":{"enabled":true}}', TOKEN)
    _, body = call(emu, "POST", "/event", event, FORM)
    assert.are.equal('{"success":1,"message":"Event spawned"}', body)
    _, body = call(emu, "GET", "/api/3/contacts/1/trackingLogs", nil, TOKEN)
    assert.are.equal(1, #S.core.json_decode(body).trackingLogs)
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

-- ---- lists, tags, custom fields and Deep Data ------------------------------

-- A JSON call to /api/3 as account `token` (default account 0): status, the
-- decoded answer (nil when not JSON) and the raw body.
local function api(emu, method, path, body, token)
  local h = { ["Api-Token"] = token or S.EMU_TOKEN, ["Content-Type"] = "application/json" }
  if type(body) == "table" then body = assert(S.core.json_encode(body)) end
  local status, raw = call(emu, method, path, body, h)
  return status, S.core.json_decode(raw), raw
end

local function state(emu, k) return emu.get("/_emulator/state?account=" .. (k or 0)) end

local function new_contact(emu, email)
  local _, j = api(emu, "POST", "/api/3/contact/sync", { contact = { email = email } })
  return j.contact.id
end

local function error_code(j) return j.errors[1].code end

describe("the emulator's lists and list status #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  it("starts with lists 1 and 2, pages them and counts them in meta.total as a string", function()
    local s, j = api(emu, "GET", "/api/3/lists")
    assert.are.equal(200, s)
    assert.are.same({ "Master Contact List", "Newsletter" }, { j.lists[1].name, j.lists[2].name })
    assert.are.equal("1", j.lists[1].id)
    assert.are.equal("2", j.meta.total)
    assert.are.equal(201, (call(emu, "POST", "/_emulator/lists", '{"account":0,"name":"VIP Customers"}')))
    _, j = api(emu, "GET", "/api/3/lists?limit=1&offset=2")
    assert.are.equal(1, #j.lists)
    assert.are.equal("VIP Customers", j.lists[1].name)
    assert.are.equal("3", j.lists[1].id)
    assert.are.equal("3", j.meta.total)
    _, j = api(emu, "GET", "/api/3/lists?filters[name][eq]=newsletter")
    assert.are.same({ "2", "1" }, { j.lists[1].id, j.meta.total })
  end)

  it("subscribes with status 1 and unsubscribes with status 2: 200 both times, one membership", function()
    local id = new_contact(emu, "Sub@Example.com")
    local s, j = api(emu, "POST", "/api/3/contactLists", { contactList = { list = 2, contact = tonumber(id), status = 1 } })
    assert.are.equal(200, s)
    assert.are.equal("sub@example.com", j.contacts[1].email)
    assert.are.same({ id, "2", 1 }, { j.contactList.contact, j.contactList.list, j.contactList.status })
    local first = j.contactList.id
    s, j = api(emu, "POST", "/api/3/contactLists", { contactList = { list = "2", contact = id, status = "2" } })
    assert.are.equal(200, s)
    assert.are.equal(first, j.contactList.id)
    api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = id, status = 1 } })
    assert.are.same({ ["sub@example.com"] = { ["1"] = 1, ["2"] = 2 } }, state(emu).memberships)
  end)

  it("shows a contact's list statuses with when it subscribed and unsubscribed, as the contact changes them too", function()
    local id = new_contact(emu, "dates@example.com")
    local s, j = api(emu, "GET", "/api/3/contacts/" .. id .. "/contactLists")
    assert.are.equal(200, s)
    assert.are.same({}, j.contactLists)
    api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = id, status = 1 } })
    -- the contact unsubscribes from an email's link, yesterday
    s, j = call(emu, "POST", "/_emulator/contactLists",
      '{"account":0,"email":"dates@example.com","list":1,"status":2,"date":"2026-12-06T10:00:00-06:00"}')
    assert.are.equal(200, s, j)
    _, j = api(emu, "GET", "/api/3/contacts/" .. id .. "/contactLists")
    local m = j.contactLists[1]
    -- strings, as the reference writes them; udate is when it unsubscribed
    assert.are.same({ id, "1", "2", "2026-12-06T10:00:00-06:00", "0" }, { m.contact, m.list, m.status, m.udate, m.sourceid })
    assert.are.equal("2026-12-06 10:00:00", m.updated_timestamp)
    assert.is_string(m.sdate)
    -- a deliberate re-subscription keeps its sourceid; the unsubscribe date stays
    s = api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = id, status = 1, sourceid = 4 } })
    assert.are.equal(200, s)
    _, j = api(emu, "GET", "/api/3/contacts/" .. id .. "/contactLists")
    m = j.contactLists[1]
    assert.are.same({ "1", "4", "2026-12-06T10:00:00-06:00" }, { m.status, m.sourceid, m.udate })
    assert.are.same({ ["dates@example.com"] = { ["1"] = 1 } }, state(emu).memberships)
    assert.are.equal(400, (call(emu, "POST", "/_emulator/contactLists", '{"account":0,"email":"nobody@example.com","list":1,"status":2}')))
    assert.are.equal(404, (api(emu, "GET", "/api/3/contacts/999/contactLists")))
  end)

  it("refuses an unknown list or contact with 404, a missing or wrong status with 422, not JSON with 400", function()
    local id = new_contact(emu, "v@example.com")
    local s, j = api(emu, "POST", "/api/3/contactLists", { contactList = { list = 99, contact = id, status = 1 } })
    assert.are.equal(404, s)
    assert.are.equal("No Result found for List with id 99", j.message)
    assert.are.equal(404, (api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = 77, status = 1 } })))
    s, j = api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = id } })
    assert.are.equal(422, s)
    assert.are.equal("field_missing", error_code(j))
    assert.are.equal("/data/attributes/status", j.errors[1].source.pointer)
    s, j = api(emu, "POST", "/api/3/contactLists", { contactList = { list = 1, contact = id, status = 3 } })
    assert.are.equal(422, s)
    assert.are.equal(400, (api(emu, "POST", "/api/3/contactLists", "{nope")))
    assert.are.same({}, state(emu).memberships)
  end)

  it("keeps each account's lists and memberships apart, and reset restores the two lists", function()
    emu.stop()
    emu = S.start_emulator("--rate-limit 0 --accounts 2")
    local other = S.EMU_TOKEN .. "-1"
    call(emu, "POST", "/_emulator/lists", '{"account":1,"name":"Only In One"}')
    local id = new_contact(emu, "two@example.com")
    api(emu, "POST", "/api/3/contactLists", { contactList = { list = 3, contact = id, status = 1 } }, other)
    assert.are.equal("2", select(2, api(emu, "GET", "/api/3/lists")).meta.total)
    assert.are.equal("3", select(2, api(emu, "GET", "/api/3/lists", nil, other)).meta.total)
    assert.are.same({}, state(emu, 0).memberships)
    assert.are.same({ ["two@example.com"] = { ["3"] = 1 } }, state(emu, 1).memberships)
    emu.post("/_emulator/reset", "")
    local st = state(emu, 1)
    assert.are.equal(2, #st.lists)
    assert.are.same({}, st.memberships)
  end)
end)

describe("the emulator's tags and contactTags #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  it("creates a tag with 201 and an id string, and refuses the same name in any case with 422", function()
    local s, j = api(emu, "POST", "/api/3/tags", { tag = { tag = "VIP", tagType = "contact", description = "" } })
    assert.are.equal(201, s)
    assert.are.same({ "VIP", "contact", "1" }, { j.tag.tag, j.tag.tagType, j.tag.id })
    s, j = api(emu, "POST", "/api/3/tags", { tag = { tag = "vip", tagType = "contact" } })
    assert.are.equal(422, s)
    assert.are.equal("Could not process request", j.message)
    assert.matches("Duplicate entry 'contact%-vip' for key 'typetag'", j.error)
    -- the key is the type and the name: a template tag of that name is another tag
    assert.are.equal(201, (api(emu, "POST", "/api/3/tags", { tag = { tag = "vip", tagType = "template" } })))
    local st = state(emu)
    assert.are.same({ vip = 1 }, st.tag_counts)
    assert.are.equal(2, #st.tags)
  end)

  it("finds tags: search contains, filters[search][eq] is exact, orders[search]=weight puts the name first", function()
    for _, name in ipairs({ "super vip", "vip-gold", "VIP", "other" }) do
      api(emu, "POST", "/api/3/tags", { tag = { tag = name, tagType = "contact", description = "" } })
    end
    local s, j = api(emu, "GET", "/api/3/tags?search=vip")
    assert.are.equal(200, s)
    assert.are.equal("3", j.meta.total)
    assert.are.equal("super vip", j.tags[1].tag)
    _, j = api(emu, "GET", "/api/3/tags?filters[search][eq]=vip")
    assert.are.same({ "1", "VIP", "3" }, { j.meta.total, j.tags[1].tag, j.tags[1].id })
    _, j = api(emu, "GET", "/api/3/tags?filters%5Bsearch%5D%5Beq%5D=vip")   -- the key percent-encoded
    assert.are.equal("1", j.meta.total)
    _, j = api(emu, "GET", "/api/3/tags?search=vip&orders[search]=weight")
    assert.are.same({ "VIP", "vip-gold", "super vip" }, { j.tags[1].tag, j.tags[2].tag, j.tags[3].tag })
    s, j = api(emu, "GET", "/api/3/tags/3")
    assert.are.same({ 200, "VIP" }, { s, j.tag.tag })
    s, j = api(emu, "GET", "/api/3/tags/99")
    assert.are.same({ 404, "No Result found for Tag with id 99" }, { s, j.message })
  end)

  it("pages tags 20 at a time by default, at most 100, from offset", function()
    for i = 1, 25 do api(emu, "POST", "/api/3/tags", { tag = { tag = "t" .. i, tagType = "contact" } }) end
    local _, j = api(emu, "GET", "/api/3/tags")
    assert.are.same({ 20, "25" }, { #j.tags, j.meta.total })
    _, j = api(emu, "GET", "/api/3/tags?limit=500")
    assert.are.equal(25, #j.tags)
    _, j = api(emu, "GET", "/api/3/tags?limit=10&offset=20")
    assert.are.same({ 5, "t21", "25" }, { #j.tags, j.tags[1].tag, j.meta.total })
  end)

  it("refuses a tag without a name or with a comma", function()
    local s, j = api(emu, "POST", "/api/3/tags", { tag = { tagType = "contact" } })
    assert.are.same({ 422, "field_missing" }, { s, error_code(j) })
    s = api(emu, "POST", "/api/3/tags", { tag = { tag = "a,b" } })
    assert.are.equal(422, s)
    s, j = api(emu, "POST", "/api/3/tags", { nottag = {} })
    assert.are.same({ 422, "/data/attributes/tag" }, { s, j.errors[1].source.pointer })
    assert.are.same({}, state(emu).tags)
  end)

  it("adds a tag to a contact with 201, once: the same pair again answers the same contactTag", function()
    local id = new_contact(emu, "tagged@example.com")
    api(emu, "POST", "/api/3/tags", { tag = { tag = "purchased", tagType = "contact" } })
    local s, j = api(emu, "POST", "/api/3/contactTags", { contactTag = { contact = id, tag = "1" } })
    assert.are.equal(201, s)
    assert.are.same({ id, "1", "1" }, { j.contactTag.contact, j.contactTag.tag, j.contactTag.id })
    s, j = api(emu, "POST", "/api/3/contactTags", { contactTag = { contact = tonumber(id), tag = 1 } })
    assert.are.same({ 201, "1" }, { s, j.contactTag.id })
    assert.are.same({ ["tagged@example.com"] = { "purchased" } }, state(emu).contact_tags)
  end)

  it("answers 404 for an unknown contact or tag and 422 for a missing one", function()
    local id = new_contact(emu, "x@example.com")
    local s, j = api(emu, "POST", "/api/3/contactTags", { contactTag = { contact = 9, tag = 1 } })
    assert.are.same({ 404, "Contact not found" }, { s, j.errors[1].detail })
    s, j = api(emu, "POST", "/api/3/contactTags", { contactTag = { contact = id, tag = 9 } })
    assert.are.same({ 404, "Tag not found" }, { s, j.errors[1].detail })
    s, j = api(emu, "POST", "/api/3/contactTags", { contactTag = { tag = 1 } })
    assert.are.same({ 422, "Missing attribute", "/data/attributes/contact" },
      { s, j.errors[1].title, j.errors[1].source.pointer })
  end)
end)

describe("the emulator's custom fields and field values #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  local function field_id(title)
    local _, j = api(emu, "GET", "/api/3/fields?limit=100")
    for _, f in ipairs(j.fields) do if f.title == title then return f.id end end
  end

  it("lists more than 20 fields: a page of 20 by default, the rest from offset 20", function()
    local s, j = api(emu, "GET", "/api/3/fields")
    assert.are.equal(200, s)
    assert.are.same({ 20, "24" }, { #j.fields, j.meta.total })
    assert.are.same({ "Birthday", "date", "BIRTHDAY", "1" },
      { j.fields[1].title, j.fields[1].type, j.fields[1].perstag, j.fields[1].id })
    local plan = j.fields[2]
    assert.are.same({ "Plan", "dropdown" }, { plan.title, plan.type })
    local values = {}
    for _, o in ipairs(j.fieldOptions) do if o.field == plan.id then values[#values + 1] = o.value end end
    assert.are.same({ "Free", "Pro" }, values)
    _, j = api(emu, "GET", "/api/3/fields?offset=20")
    assert.are.same({ 4, "Last Order Date", "Loyalty Tier" }, { #j.fields, j.fields[1].title, j.fields[2].title })
    -- fieldOptions holds the options of the fields on the page only
    for _, o in ipairs(j.fieldOptions) do assert.are.equal(j.fields[2].id, o.field) end
  end)

  it("stores values that fit the field's type with 200 and replaces them", function()
    local id = new_contact(emu, "typed@example.com")
    local good = {
      { "Birthday", "2000-02-29" }, { "Signup Date", "2020-05-19T02:45:00-05:00" }, { "Plan", "Pro" },
      { "Interests", "||Shoes||Bags||" }, { "Favorite Color", "Blue" }, { "Sizes", "||M||" },
      { "Lifetime Value", "1234.50" }, { "Company Size", "51-200" }, { "Renewal Date", "2024-01-31T08:00:00Z" },
    }
    for _, g in ipairs(good) do
      local s, j, raw = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = field_id(g[1]), value = g[2] } })
      assert.are.equal(200, s, g[1] .. ": " .. raw)
      assert.are.same({ id, g[2], id }, { j.fieldValue.contact, j.fieldValue.value, j.fieldValue.owner })
      assert.are.equal("typed@example.com", j.contacts[1].email)
    end
    local _, first = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = 2, value = "Free" } })
    local _, again = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = 2, value = "Pro" } })
    assert.are.equal(first.fieldValue.id, again.fieldValue.id)
    local values = state(emu).field_values["typed@example.com"]
    assert.are.same({ "Pro", "||Shoes||Bags||", "2000-02-29" }, { values.Plan, values.Interests, values.Birthday })
  end)

  it("refuses with 422 a value that does not fit the field's type", function()
    local id = new_contact(emu, "bad@example.com")
    local bad = {
      { "Birthday", "2001-02-29" }, { "Birthday", "12/31/2020" }, { "Birthday", "2020-12-31T00:00:00Z" },
      { "Signup Date", "2020-05-19" }, { "Signup Date", "2020-05-19T25:00:00Z" }, { "Plan", "Enterprise" },
      { "Plan", "pro" }, { "Interests", "Shoes" }, { "Interests", "||Socks||" }, { "Interests", "||Shoes|Hats||" },
      { "Sizes", "||||" }, { "Favorite Color", "||Blue||" },
    }
    for _, b in ipairs(bad) do
      local s, j, raw = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = field_id(b[1]), value = b[2] } })
      assert.are.equal(422, s, b[1] .. " = " .. b[2] .. ": " .. raw)
      assert.are.same({ "field_invalid", "/data/attributes/value" }, { error_code(j), j.errors[1].source.pointer })
    end
    assert.are.same({}, state(emu).field_values)
  end)

  it("takes contact.fieldValues in a contact sync, checked the same way, and answers them in fieldValues", function()
    local s, j = api(emu, "POST", "/api/3/contact/sync", { contact = { email = "sync@example.com",
      fieldValues = { { field = "1", value = "1990-07-04" }, { field = "3", value = "||Hats||" } } } })
    assert.are.equal(201, s)
    assert.are.same({ 2, "1", "1990-07-04", j.contact.id }, { #j.fieldValues, j.fieldValues[1].field, j.fieldValues[1].value, j.fieldValues[1].contact })
    s, j = api(emu, "POST", "/api/3/contact/sync", { contact = { email = "sync@example.com", firstName = "Changed",
      fieldValues = { { field = "1", value = "04/07/1990" } } } })
    assert.are.same({ 422, "field_invalid" }, { s, error_code(j) })
    assert.are.equal("", emu.contacts()[1].firstName)   -- refused whole: the contact is left as it was
    assert.are.same({ Birthday = "1990-07-04", Interests = "||Hats||" }, state(emu).field_values["sync@example.com"])
  end)

  it("answers 404 for an unknown field or contact and 422 without a value", function()
    local id = new_contact(emu, "f@example.com")
    local s, j = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = 99, value = "x" } })
    assert.are.same({ 404, "No Result found for Field with id 99" }, { s, j.message })
    assert.are.equal(404, (api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = 42, field = 1, value = "x" } })))
    s, j = api(emu, "POST", "/api/3/fieldValues", { fieldValue = { contact = id, field = 1 } })
    assert.are.same({ 422, "/data/attributes/value" }, { s, j.errors[1].source.pointer })
  end)
end)

describe("the emulator's Deep Data: connections, customers, orders #cli", function()
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0") end)
  after_each(function() emu.stop() end)

  local CONNECTION = { connection = { service = "signal", externalid = "shop-1", name = "Shop",
    logoUrl = "https://shop.example/logo.png", linkUrl = "https://shop.example/" } }

  local function order(overrides)
    local o = {
      externalid = "ORD-1", source = 1, email = "buyer@example.com", totalPrice = 12697, currency = "USD",
      connectionid = "1", customerid = "1", externalCreatedDate = "2024-03-01T10:00:00-05:00",
      shippingAmount = 500, taxAmount = 899, discountAmount = 0, orderNumber = "1001",
      orderProducts = {
        { externalid = "P1", name = "Hat", price = 2500, quantity = 2, category = "Hats", sku = "HAT-1" },
        { externalid = "P2", name = "Shoes", price = 4999, quantity = 1, category = "Shoes", sku = "SHO-1" },
        { externalid = "P3", name = "Bag", price = 1799, quantity = 1, category = "Bags", sku = "BAG-1" },
      },
    }
    for k, v in pairs(overrides or {}) do o[k] = v end
    return { ecomOrder = o }
  end

  local function store_and_customer()
    api(emu, "POST", "/api/3/connections", CONNECTION)
    api(emu, "POST", "/api/3/ecomCustomers",
      { ecomCustomer = { connectionid = "1", externalid = "buyer@example.com", email = "buyer@example.com", acceptsMarketing = "1" } })
  end

  it("creates a connection with 200, refuses the same service and externalid with 422 duplicate, finds it by filters", function()
    local s, j = api(emu, "POST", "/api/3/connections", CONNECTION)
    assert.are.equal(200, s)   -- create-connection documents 200, unlike the other creates
    assert.are.same({ "1", "signal", "shop-1", 0 }, { j.connection.id, j.connection.service, j.connection.externalid, j.connection.isInternal })
    s, j = api(emu, "POST", "/api/3/connections", CONNECTION)
    assert.are.same({ 422, "duplicate", "/data/attributes/externalid" }, { s, error_code(j), j.errors[1].source.pointer })
    local other = { connection = { service = "signal", externalid = "shop-2", name = "B", logoUrl = "x", linkUrl = "y" } }
    assert.are.equal(200, (api(emu, "POST", "/api/3/connections", other)))
    s, j = api(emu, "GET", "/api/3/connections?filters[service]=signal&filters[externalid]=shop-2")
    assert.are.same({ 200, "1", "2" }, { s, j.meta.total, j.connections[1].id })
    s, j = api(emu, "POST", "/api/3/connections", { connection = { service = "signal", externalid = "s3", name = "C", logoUrl = "x" } })
    assert.are.same({ 422, "field_missing", "/data/attributes/linkUrl" }, { s, error_code(j), j.errors[1].source.pointer })
    assert.are.equal(2, #state(emu).connections)
  end)

  it("creates a customer with 201, refuses a second one with that externalid, finds it by email and connection", function()
    api(emu, "POST", "/api/3/connections", CONNECTION)
    local body = { ecomCustomer = { connectionid = 1, externalid = "c-1", email = "Buyer@Example.com", acceptsMarketing = 1 } }
    local s, j = api(emu, "POST", "/api/3/ecomCustomers", body)
    assert.are.equal(201, s)
    assert.are.same({ "1", "1", "c-1" }, { j.ecomCustomer.id, j.ecomCustomer.connectionid, j.ecomCustomer.externalid })
    s, j = api(emu, "POST", "/api/3/ecomCustomers", body)
    assert.are.same({ 422, "duplicate" }, { s, error_code(j) })
    s, j = api(emu, "GET", "/api/3/ecomCustomers?filters[email]=buyer@example.com&filters[connectionid]=1")
    assert.are.same({ 200, "1", "1" }, { s, j.meta.total, j.ecomCustomers[1].id })
    _, j = api(emu, "GET", "/api/3/ecomCustomers?filters[connectionid]=2")
    assert.are.same({ "0" }, { j.meta.total })
    s, j = api(emu, "POST", "/api/3/ecomCustomers", { ecomCustomer = { connectionid = 5, externalid = "c-2", email = "a@b.co" } })
    assert.are.same({ 422, "/data/attributes/connectionid" }, { s, j.errors[1].source.pointer })
    s, j = api(emu, "POST", "/api/3/ecomCustomers", { ecomCustomer = { connectionid = 1, externalid = "c-3", email = "nope" } })
    assert.are.same({ 422, "email_invalid" }, { s, error_code(j) })
  end)

  it("creates an order with its products in cents (201) and refuses its externalid again with 422 duplicate", function()
    store_and_customer()
    local s, j = api(emu, "POST", "/api/3/ecomOrders", order())
    assert.are.equal(201, s)
    assert.are.same({ "1", "ORD-1", 12697, "1", 4 },
      { j.ecomOrder.id, j.ecomOrder.externalid, j.ecomOrder.totalPrice, j.ecomOrder.source, j.ecomOrder.totalProducts })
    assert.are.same({ "1", "2", "3" }, j.ecomOrder.orderProducts)
    assert.are.same({ 3, 2500, 2 }, { #j.ecomOrderProducts, j.ecomOrderProducts[1].price, j.ecomOrderProducts[1].quantity })
    assert.are.equal("signal", j.connections[1].service)
    s, j = api(emu, "POST", "/api/3/ecomOrders", order())
    assert.are.same({ 422, "duplicate", "/data/attributes/externalid" }, { s, error_code(j), j.errors[1].source.pointer })
    local orders = state(emu).orders
    assert.are.equal(1, #orders)
    assert.are.same({ "ORD-1", 1, 12697, 500, 899 },
      { orders[1].externalid, orders[1].source, orders[1].totalPrice, orders[1].shippingAmount, orders[1].taxAmount })
    local p = orders[1].products
    assert.are.same({ { "P1", 2500, 2 }, { "P2", 4999, 1 }, { "P3", 1799, 1 } },
      { { p[1].externalid, p[1].price, p[1].quantity }, { p[2].externalid, p[2].price, p[2].quantity },
        { p[3].externalid, p[3].price, p[3].quantity } })
    s, j = api(emu, "GET", "/api/3/ecomOrders?filters[externalid]=ORD-1")
    assert.are.same({ 200, "1", "ORD-1" }, { s, j.meta.total, j.ecomOrders[1].externalid })
    _, j = api(emu, "GET", "/api/3/ecomOrders?filters[externalid]=ORD-2")
    assert.are.same({ "0" }, { j.meta.total })
    -- the customer's aggregates follow its orders
    _, j = api(emu, "GET", "/api/3/ecomCustomers")
    assert.are.same({ "12697", "1", "4" }, { j.ecomCustomers[1].totalRevenue, j.ecomCustomers[1].totalOrders, j.ecomCustomers[1].totalProducts })
  end)

  it("takes an order without orderProducts or with [], refuses them as an object", function()
    store_and_customer()
    local o = order({ externalid = "N-1" })
    o.ecomOrder.orderProducts = nil
    local s, j = api(emu, "POST", "/api/3/ecomOrders", o)
    assert.are.same({ 201, "0" }, { s, tostring(j.ecomOrder.totalProducts) })
    local text = assert(S.core.json_encode(order({ externalid = "N-2" }))):gsub('"orderProducts":%b[]', '"orderProducts":[]')
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomOrders", text)))
    text = text:gsub('"N%-2"', '"N-3"'):gsub('"orderProducts":%[%]', '"orderProducts":{}')
    s, j = api(emu, "POST", "/api/3/ecomOrders", text)
    assert.are.same({ 422, "invalid", "/data/attributes/orderProducts" }, { s, error_code(j), j.errors[1].source.pointer })
    assert.are.equal(2, #state(emu).orders)
  end)

  it("creates a repeated externalid again when switched to (the reference documents no duplicate answer)", function()
    emu.faults({ ecom_duplicates = "accept" })
    assert.are.equal(200, (api(emu, "POST", "/api/3/connections", CONNECTION)))
    assert.are.equal(200, (api(emu, "POST", "/api/3/connections", CONNECTION)))
    local customer = { ecomCustomer = { connectionid = "1", externalid = "c", email = "buyer@example.com" } }
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomCustomers", customer)))
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomCustomers", customer)))
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomOrders", order())))
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomOrders", order())))
    local st = state(emu)
    assert.are.same({ 2, 2, 2 }, { #st.connections, #st.customers, #st.orders })
    emu.post("/_emulator/reset", "{}")   -- and reset refuses repeats again
    api(emu, "POST", "/api/3/connections", CONNECTION)
    assert.are.equal(422, (api(emu, "POST", "/api/3/connections", CONNECTION)))
  end)

  it("takes the same order externalid in another connection", function()
    store_and_customer()
    api(emu, "POST", "/api/3/ecomOrders", order())
    api(emu, "POST", "/api/3/connections", { connection = { service = "signal", externalid = "shop-2", name = "B", logoUrl = "x", linkUrl = "y" } })
    api(emu, "POST", "/api/3/ecomCustomers", { ecomCustomer = { connectionid = 2, externalid = "b", email = "buyer@example.com" } })
    assert.are.equal(201, (api(emu, "POST", "/api/3/ecomOrders", order({ connectionid = 2, customerid = 2 }))))
  end)

  it("refuses prices that are not integer cents, missing attributes and a customer of another connection", function()
    store_and_customer()
    local o = order()
    o.ecomOrder.orderProducts[2].price = 49.99
    local s, j = api(emu, "POST", "/api/3/ecomOrders", o)
    assert.are.same({ 422, "invalid", "/data/attributes/orderProducts/1/price" }, { s, error_code(j), j.errors[1].source.pointer })
    o = order()
    o.ecomOrder.orderProducts[1].price = "25.00"
    assert.are.equal(422, (api(emu, "POST", "/api/3/ecomOrders", o)))
    o = order({ totalPrice = 126.97 })
    s, j = api(emu, "POST", "/api/3/ecomOrders", o)
    assert.are.same({ 422, "/data/attributes/totalPrice" }, { s, j.errors[1].source.pointer })
    o = order({ shippingAmount = -5 })
    assert.are.equal(422, (api(emu, "POST", "/api/3/ecomOrders", o)))
    o = order()
    o.ecomOrder.orderProducts[3].quantity = 0
    s, j = api(emu, "POST", "/api/3/ecomOrders", o)
    assert.are.same({ 422, "/data/attributes/orderProducts/2/quantity" }, { s, j.errors[1].source.pointer })
    for _, attr in ipairs({ "externalid", "source", "email", "totalPrice", "currency", "connectionid", "customerid",
                            "externalCreatedDate" }) do
      o = order()
      o.ecomOrder[attr] = nil
      s, j = api(emu, "POST", "/api/3/ecomOrders", o)
      assert.are.same({ 422, "field_missing", "/data/attributes/" .. attr }, { s, error_code(j), j.errors[1].source.pointer })
    end
    o = order()
    o.ecomOrder.orderProducts[1].name = nil
    s, j = api(emu, "POST", "/api/3/ecomOrders", o)
    assert.are.same({ 422, "/data/attributes/orderProducts/0/name" }, { s, j.errors[1].source.pointer })
    s, j = api(emu, "POST", "/api/3/ecomOrders", order({ source = 2 }))
    assert.are.same({ 422, "/data/attributes/source" }, { s, j.errors[1].source.pointer })
    api(emu, "POST", "/api/3/connections", { connection = { service = "signal", externalid = "shop-2", name = "B", logoUrl = "x", linkUrl = "y" } })
    s, j = api(emu, "POST", "/api/3/ecomOrders", order({ connectionid = 2 }))
    assert.are.same({ 422, "/data/attributes/customerid" }, { s, j.errors[1].source.pointer })
    assert.are.same({}, state(emu).orders)
  end)
end)

-- blueprints/activecampaign/answers.yaml: dry-run's documented answers must
-- be what the emulator answers, shape for shape.
describe("the emulator's bulk import #cli", function()
  -- Imports finish only when a test says so (POST /_emulator/imports/complete),
  -- or at once with import_delay_ms 0: no test waits on a clock.
  local emu
  before_each(function() emu = S.start_emulator("--rate-limit 0 --import-delay-ms 600000 --accounts 2") end)
  after_each(function() emu.stop() end)

  local function import(contacts, token) return api(emu, "POST", "/api/3/import/bulk_import", { contacts = contacts }, token) end
  local function info(id, token) return api(emu, "GET", "/api/3/import/info?batchId=" .. id, nil, token) end
  local function complete() emu.post("/_emulator/imports/complete", "{}") end
  local function many(n, domain)
    local t = {}
    for i = 1, n do t[i] = { email = "c" .. i .. "@" .. (domain or "bulk.test") } end
    return t
  end

  it("queues the contacts at once and imports them later: created ids in success, names, fields, tags, lists", function()
    local old = new_contact(emu, "old@b.co")   -- exists: updated, so in neither list
    local s, j = import({
      { email = "New@B.co", first_name = "Ada", last_name = "L", phone = "+44 1", tags = { "VIP", "launch" },
        fields = { { id = 2, value = "Pro" }, { id = 1, value = "2000-01-31" } }, subscribe = { { listid = 1 } } },
      { email = "old@b.co", first_name = "Old", tags = { "vip" }, unsubscribe = { { listid = 2 } } },
    })
    assert.are.equal(200, s)
    assert.are.equal(1, j.success)
    assert.are.equal(2, j.queued_contacts)
    assert.is_string(j.batchId)
    assert.is_string(j.message)
    local _, st = info(j.batchId)
    assert.are.equal("active", st.status)
    assert.are.same({}, st.success)
    assert.are.equal(1, #emu.contacts())   -- nothing imported yet
    complete()
    _, st = info(j.batchId)
    assert.are.equal("completed", st.status)
    assert.are.same({ "2" }, st.success)
    assert.are.same({}, st.failure)
    local c = emu.contacts()
    assert.are.same({ "old@b.co", "Old" }, { c[1].email, c[1].firstName })
    assert.are.same({ "new@b.co", "Ada", "L", "+44 1" }, { c[2].email, c[2].firstName, c[2].lastName, c[2].phone })
    local state0 = state(emu)
    assert.are.same({ vip = 1, launch = 1 }, state0.tag_counts)   -- created by name once, any case
    assert.are.same({ "VIP", "launch" }, state0.contact_tags["new@b.co"])
    assert.are.same({ "VIP" }, state0.contact_tags["old@b.co"])
    assert.are.same({ Plan = "Pro", Birthday = "2000-01-31" }, state0.field_values["new@b.co"])
    assert.are.same({ ["1"] = 1 }, state0.memberships["new@b.co"])
    assert.are.same({ ["2"] = 2 }, state0.memberships["old@b.co"])
    assert.are.equal("completed", state0.imports[1].status)
    assert.is_truthy(old)
  end)

  it("completes by itself after the configured delay", function()
    emu.faults({ import_delay_ms = 0 })
    local _, j = import(many(2))
    local _, st = info(j.batchId)
    assert.are.equal("completed", st.status)
    assert.are.same({ "1", "2" }, st.success)
  end)

  it("never re-subscribes a contact who unsubscribed; subscribes one not on the list", function()
    new_contact(emu, "gone@b.co")
    new_contact(emu, "here@b.co")
    emu.post("/_emulator/contactLists", S.core.json_encode({ email = "gone@b.co", list = 1, status = 2 }))
    local _, j = import({ { email = "gone@b.co", subscribe = { { listid = 1 }, { listid = 2 } } },
                          { email = "here@b.co", subscribe = { { listid = 1 } } } })
    complete()
    assert.are.equal("completed", select(2, info(j.batchId)).status)
    local m = state(emu).memberships
    assert.are.same({ ["1"] = 2, ["2"] = 1 }, m["gone@b.co"])
    assert.are.same({ ["1"] = 1 }, m["here@b.co"])
  end)

  it("refuses a body that fails validation with 400 and failureReasons per contact index, importing nothing", function()
    local s, j = import({ { email = "ok@b.co" }, { email = "nope" }, { first_name = "no email" },
                          { email = "a@b.co", subscribe = { { listid = 99 } }, fields = { { id = 999, value = "x" } } },
                          { email = "t@b.co", tags = { "a,b" } } })
    assert.are.equal(400, s)
    assert.are.equal(0, j.success)
    assert.is_nil(j.failureReasons["0"])
    assert.are.same({ "Invalid email address" }, j.failureReasons["1"])
    assert.are.same({ "email is required" }, j.failureReasons["2"])
    assert.are.same({ "custom field 999 does not exist", "list 99 does not exist" }, j.failureReasons["3"])
    assert.are.same({ "a tag is a name without commas" }, j.failureReasons["4"])
    assert.are.same({}, emu.contacts())
    assert.are.same({}, state(emu).imports)
    s, j = import(many(251))
    assert.are.equal(400, s)
    assert.matches("250", j.message)
    s = api(emu, "POST", "/api/3/import/bulk_import", { contacts = S.core.array({}) })
    assert.are.equal(400, s)
    s = api(emu, "POST", "/api/3/import/bulk_import", "not json")
    assert.are.equal(400, s)
    assert.are.equal(200, (import(many(250))))
  end)

  it("fails single contacts at import time: an excluded email, a value that does not fit its field", function()
    emu.post("/_emulator/exclusions", S.core.json_encode({ email = "blocked@b.co" }))
    local _, j = import({ { email = "fine@b.co" }, { email = "Blocked@b.co" },
                          { email = "date@b.co", fields = { { id = 1, value = "31/01/2000" } } } })
    complete()
    local _, st = info(j.batchId)
    assert.are.equal("completed", st.status)
    assert.are.same({ "1" }, st.success)
    assert.are.same({ "Blocked@b.co", "date@b.co" }, st.failure)
    assert.are.equal(1, #emu.contacts())
  end)

  it("allows a number of imports a minute per account, then 429 with Retry-After", function()
    emu.faults({ imports_per_minute = 2 })
    local statuses = {}
    for i = 1, 3 do statuses[i] = import(many(2)) end
    assert.are.same({ 200, 200, 429 }, statuses)
    local token1 = S.emulator_account(emu, 1).api_key
    assert.are.equal(200, (import(many(2), token1)))   -- another account has its own
    local _, _, headers = call(emu, "POST", "/api/3/import/bulk_import",
      S.core.json_encode({ contacts = many(2) }), TOKEN)
    assert.matches("Retry%-After: %d+", headers)
  end)

  it("allows 20 imports of a single contact a minute (the reference's limit), apart from larger ones", function()
    local statuses = {}
    for i = 1, 21 do statuses[i] = import({ { email = "one" .. i .. "@b.co" } }) end
    assert.are.equal(200, statuses[20])
    assert.are.equal(429, statuses[21])
    assert.are.equal(200, (import(many(2))))
  end)

  it("answers import/info: 400 without batchId, 404 for another account's, status false when asked too soon, failed when told", function()
    local _, j = import(many(2))
    local s, e = api(emu, "GET", "/api/3/import/info")
    assert.are.equal(400, s)
    assert.are.equal("'batchId' is a required field.", e.message)
    assert.are.equal(404, (info(j.batchId, S.emulator_account(emu, 1).api_key)))
    emu.faults({ import_status_false = 1 })
    local _, st = info(j.batchId)
    assert.are.equal(false, st.status)
    assert.are.equal("active", select(2, info(j.batchId)).status)
    emu.faults({ import_ends = "failed" })
    local _, k = import(many(2, "other.test"))
    complete()
    assert.are.equal("failed", select(2, info(k.batchId)).status)
    assert.are.equal("completed", select(2, info(j.batchId)).status)
    assert.are.equal(2, #emu.contacts())   -- the failed import imported nothing
  end)
end)

describe("the emulator and answers.yaml #cli", function()
  -- The file's entries: "- method:" starts one, "  json:" may go on over
  -- lines indented further (flow YAML that is also JSON).
  local function read_answers()
    local entries, cur, key = {}, nil, nil
    for line in io.lines("blueprints/activecampaign/answers.yaml") do
      local k, v = line:match("^%-? *([%w_]+): (.*)$")
      if line:match("^%- method: ") then cur = {}; entries[#entries + 1] = cur end
      if cur and k and not line:match("^    ") then key = k; cur[k] = v
      elseif cur and key == "json" and line:match("^    ") then cur.json = cur.json .. " " .. line end
    end
    for _, e in ipairs(entries) do
      e.status = tonumber(e.status)
      e.json = assert(S.core.json_decode(e.json), e.method .. " " .. e.path)
    end
    return entries
  end

  -- Every member of the documented answer is in the emulator's, with the
  -- same JSON type (null in either stands for any); arrays compare their
  -- first elements.
  local function same_shape(doc, got, where)
    if doc == S.core.null or got == S.core.null then return end
    assert(type(doc) == type(got), where .. ": documented " .. type(doc) .. ", emulator " .. type(got))
    if type(doc) ~= "table" then return end
    assert(getmetatable(doc) == getmetatable(got), where .. ": array and object differ")
    if doc[1] ~= nil and got[1] ~= nil then same_shape(doc[1], got[1], where .. "[1]") end
    for k, v in pairs(doc) do
      if type(k) == "string" then
        assert(got[k] ~= nil, where .. "." .. k .. " missing")
        same_shape(v, got[k], where .. "." .. k)
      end
    end
  end

  it("answers every documented endpoint with the documented status and shape", function()
    local emu = S.start_emulator("--rate-limit 0")
    finally(function() emu.stop() end)
    local requests = {
      { "POST", "/api/3/contact/sync", { contact = { email = "johndoe@example.com", firstName = "John" } } },
      { "GET", "/api/3/lists" },
      { "POST", "/api/3/contactLists", { contactList = { list = 2, contact = 1, status = 1 } } },
      { "GET", "/api/3/contacts/1/contactLists", nil, "/api/3/contacts/*/contactLists" },
      { "POST", "/api/3/tags", { tag = { tag = "My Tag", tagType = "contact", description = "Description" } } },
      { "GET", "/api/3/tags?search=tag" },
      { "POST", "/api/3/contactTags", { contactTag = { contact = "1", tag = "1" } } },
      { "GET", "/api/3/fields" },
      { "POST", "/api/3/fieldValues", { fieldValue = { contact = 1, field = 6, value = "Blue" } } },
      { "POST", "/api/3/connections", { connection = { service = "fooCommerce", externalid = "toystore123",
        name = "Toystore, Inc.", logoUrl = "http://example.com/i/foo.png", linkUrl = "http://example.com/foo/" } } },
      { "GET", "/api/3/connections" },
      { "POST", "/api/3/ecomCustomers", { ecomCustomer = { connectionid = "1", externalid = "56789",
        email = "alice@example.com", acceptsMarketing = "1" } } },
      { "GET", "/api/3/ecomCustomers" },
      { "POST", "/api/3/ecomOrders", { ecomOrder = { externalid = "3246315234", source = "1", email = "alice@example.com",
        orderProducts = { { externalid = "PROD12345", name = "Pogo Stick", price = 4900, quantity = 1, category = "Toys", sku = "POGO-12" } },
        externalCreatedDate = "2016-09-13T17:41:39-04:00", totalPrice = 9111, shippingAmount = 200, taxAmount = 500,
        discountAmount = 100, currency = "USD", orderNumber = "myorder-123", connectionid = "1", customerid = "1" } } },
      { "GET", "/api/3/ecomOrders?filters[externalid]=none" },
      { "GET", "/api/3/eventTracking" },
      { "POST", "/api/3/import/bulk_import", { contacts = { { email = "someone@example.com", first_name = "Jane",
        tags = { "dictumst" }, fields = { { id = 1, value = "2000-01-31" } }, subscribe = { { listid = 1 } } } } } },
      { "GET", "/api/3/import/info?batchId=" .. "BATCH", nil, "/api/3/import/info" },
    }
    local answered = {}
    local batch
    for _, r in ipairs(requests) do
      local status, got, raw = api(emu, r[1], r[2]:gsub("BATCH", batch or ""), r[3])
      if r[2] == "/api/3/import/bulk_import" then batch = got.batchId end
      local path = r[4] or r[2]:gsub("%?.*", "")
      answered[r[1] .. " " .. path] = { status = status, json = got, raw = raw }
    end
    local entries = read_answers()
    assert.are.equal(#requests, #entries)
    for _, e in ipairs(entries) do
      local key = e.method .. " " .. e.path
      local a = assert(answered[key], key .. " is not exercised here")
      assert.are.equal(e.status, a.status, key .. ": " .. a.raw)
      same_shape(e.json, a.json, key)
      assert.matches("^https://developers%.activecampaign%.com/reference/", e.doc)
    end
  end)
end)
