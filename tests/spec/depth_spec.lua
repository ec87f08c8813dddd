-- ActiveCampaign in depth against the emulator (127.0.0.1 only): lists that
-- follow consent, tags created once per account under concurrency, typed
-- custom fields, Deep Data orders (cents, no duplicate after a redelivery or
-- a kill mid-sequence), and a failing step retried from that step.  Each
-- asserts on what the emulator holds (/_emulator/state) and on every
-- request it received (/_emulator/requests).
local S = require("support")
local core = S.core

local FAST = " --rate-limit 500 --retry-base-ms 20"

-- A config file for the emulator with `extra` YAML lines (the options).
local function config(emu, extra)
  local path = S.emulator_config(emu)
  local f = assert(io.open(path, "ab"))
  f:write(extra, "\n")
  f:close()
  return path
end

local function deliver(cfg, st, input, extra)
  local lines, err, code = S.deliver("--config " .. cfg .. " --state " .. st .. FAST .. (extra or ""), input)
  assert.are.equal(0, code, err)
  local by = {}
  for _, l in ipairs(lines) do by[l.message_id] = l end
  return by, lines
end

local function state(emu) return emu.get("/_emulator/state?account=0") end

-- Requests received after the first `n`, optionally only METHOD PATH.
local function requests(emu, n, method, path)
  local out = {}
  for i, r in ipairs(emu.requests()) do
    if i > (n or 0) and (not method or (r.method == method and r.path == path)) then out[#out + 1] = r end
  end
  return out
end

local function count(emu, method, path) return #requests(emu, 0, method, path) end

local function sorted(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  return c
end

local function identify(email, id, traits, granted)
  traits.email = email
  return core.json_encode({ type = "identify", messageId = id, traits = traits,
                            context = { consent = { marketing = granted ~= false } } })
end

local function ndjson(t) return table.concat(t, "\n") .. "\n" end

-- Order Completed with three products, prices as a string, a number and a
-- whole string.
local function order(id, order_id)
  return core.json_encode({
    type = "track", event = "Order Completed", messageId = id, timestamp = "2024-05-01T12:00:00Z",
    properties = {
      order_id = order_id or "A-100", total = "49.97", currency = "eur",
      products = {
        { product_id = "p1", name = "Shoe", price = "19.99", quantity = 2 },
        { product_id = "p2", name = "Hat", price = 9.99, quantity = 1 },
        { product_id = "p3", name = "Bag", price = "10", quantity = 1 },
      },
    },
    context = { traits = { email = "buyer@example.com" }, consent = { marketing = true } },
  }) .. "\n"
end

-- The six steps of a first order in an account, in order.
local ORDER_STEPS = {
  { "GET", "/api/3/connections" }, { "POST", "/api/3/connections" },
  { "GET", "/api/3/ecomCustomers" }, { "POST", "/api/3/ecomCustomers" },
  { "GET", "/api/3/ecomOrders" }, { "POST", "/api/3/ecomOrders" },
}

describe("ActiveCampaign in depth #cli", function()
  local emu, cfg, st
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    st = S.tmpdir()
    cfg = nil
  end)
  after_each(function()
    emu.stop()
    if cfg then os.remove(cfg) end
    os.execute("rm -rf " .. st)
  end)

  it("lists follow consent: granted subscribes, denied unsubscribes with the lookup and list statuses only", function()
    cfg = config(emu, "lists: [1, 2]")
    local by = deliver(cfg, st, identify("ada@example.com", "c1", { first_name = "Ada" }) .. "\n")
    assert.are.equal("delivered", by.c1.outcome, by.c1.reason)
    assert.are.same({ ["1"] = 1, ["2"] = 1 }, state(emu).memberships["ada@example.com"])
    local before = #emu.requests()

    -- consent withdrawn, on an event full of profile and behaviour data
    local denied = core.json_encode({
      type = "track", event = "Order Completed", messageId = "c2",
      properties = { order_id = "SECRET-ORDER", revenue = 4242, currency = "EUR" },
      context = { traits = { email = "ada@example.com", first_name = "Adelaide", phone = "+15550100" },
                  consent = { marketing = false } },
    })
    by = deliver(cfg, st, denied .. "\n")
    assert.are.equal("delivered", by.c2.outcome, by.c2.reason)
    assert.are.same({ ["1"] = 2, ["2"] = 2 }, state(emu).memberships["ada@example.com"])
    local sent = requests(emu, before)
    local seen = {}
    for _, r in ipairs(sent) do seen[#seen + 1] = r.method .. " " .. r.path end
    assert.are.same({ "GET /api/3/contacts", "POST /api/3/contactLists", "POST /api/3/contactLists" }, seen)
    local lists = {}
    for _, r in ipairs(sent) do
      for _, secret in ipairs({ "SECRET", "4242", "Adelaide", "5550100", "revenue", "order" }) do
        assert.is_nil(r.body:find(secret, 1, true), secret .. " sent on a denied event: " .. r.body)
      end
      if r.method == "POST" then
        local body = core.json_decode(r.body)
        assert.are.equal(2, body.contactList.status)
        lists[#lists + 1] = tostring(body.contactList.list)
      end
    end
    assert.are.same({ "1", "2" }, sorted(lists))
    -- the contact was looked up, not synced: the profile is as granted left it
    assert.are.equal("Ada", emu.contacts()[1].firstName)
    assert.are.equal(0, #emu.contacts()[1].trackingLogs)
  end)

  -- The compliance case (docs/activecampaign.md, Contact depth): status 1 re-subscribes a contact who
  -- unsubscribed; it is sent only when consent came after the unsubscribe.
  it("leaves a contact who unsubscribed yesterday unsubscribed, and re-subscribes with sourceid 4 one who re-consented", function()
    cfg = config(emu, "lists: [1, 2]")
    local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
    local function event(id, granted)
      return core.json_encode({ type = "identify", messageId = id, timestamp = now,
        traits = { email = "ada@example.com", first_name = "Ada" },
        context = { consent = { marketing = granted } } }) .. "\n"
    end
    assert.are.equal("delivered", deliver(cfg, st, event("u1", true)).u1.outcome)
    assert.are.same({ ["1"] = 1, ["2"] = 1 }, state(emu).memberships["ada@example.com"])
    -- yesterday she clicked "unsubscribe" in a newsletter of list 1
    local yesterday = os.date("!%Y-%m-%dT%H:%M:%S-00:00", os.time() - 86400)
    emu.post("/_emulator/contactLists", core.json_encode({ account = 0, email = "ada@example.com", list = 1,
                                                           status = 2, date = yesterday }))
    -- today she comes back, consent granted as before: on a fresh state (nothing
    -- remembered, as a new install) her list statuses are read, and left alone
    local fresh = S.tmpdir()
    finally(function() os.execute("rm -rf " .. fresh) end)
    local before = #emu.requests()
    local by = deliver(cfg, fresh, event("u2", true))
    assert.are.equal("delivered", by.u2.outcome, by.u2.reason)
    assert.are.same({ ["1"] = 2, ["2"] = 1 }, state(emu).memberships["ada@example.com"])
    local seen = {}
    for _, r in ipairs(requests(emu, before)) do seen[#seen + 1] = r.method .. " " .. r.path end
    assert.are.same({ "POST /api/3/contact/sync", "GET /api/3/contacts/1/contactLists" }, seen)
    -- where her consent is remembered, nothing about lists is sent at all
    before = #emu.requests()
    assert.are.equal("delivered", deliver(cfg, st, event("u3", true)).u3.outcome)
    assert.are.equal(0, #requests(emu, before, "POST", "/api/3/contactLists"))
    assert.are.same({ ["1"] = 2, ["2"] = 1 }, state(emu).memberships["ada@example.com"])

    -- she withdraws consent, then grants it again: that grant came after every
    -- unsubscribe, so both lists are subscribed again, deliberately (sourceid 4)
    assert.are.equal("delivered", deliver(cfg, st, event("u4", false)).u4.outcome)
    assert.are.same({ ["1"] = 2, ["2"] = 2 }, state(emu).memberships["ada@example.com"])
    before = #emu.requests()
    by = deliver(cfg, st, event("u5", true))
    assert.are.equal("delivered", by.u5.outcome, by.u5.reason)
    assert.are.same({ ["1"] = 1, ["2"] = 1 }, state(emu).memberships["ada@example.com"])
    local posted = requests(emu, before, "POST", "/api/3/contactLists")
    assert.are.equal(2, #posted)
    for _, r in ipairs(posted) do
      local body = core.json_decode(r.body).contactList
      assert.are.same({ 1, 4 }, { body.status, body.sourceid })
    end
  end)

  it("does not send list statuses again after a restart when consent has not changed", function()
    cfg = config(emu, "lists: [1, 2]")
    assert.are.equal("delivered", deliver(cfg, st, identify("rest@example.com", "r1", {}) .. "\n").r1.outcome)
    assert.are.equal(2, count(emu, "POST", "/api/3/contactLists"))
    local before = #emu.requests()
    -- another process on the same state directory: a restart
    local by = deliver(cfg, st, identify("rest@example.com", "r2", { first_name = "Rest" }) .. "\n")
    assert.are.equal("delivered", by.r2.outcome, by.r2.reason)
    local seen = {}
    for _, r in ipairs(requests(emu, before)) do seen[#seen + 1] = r.method .. " " .. r.path end
    assert.are.same({ "POST /api/3/contact/sync" }, seen)
  end)

  it("finds a tag by its exact name among more than 100 that contain it", function()
    cfg = config(emu, "tags: true")
    local function create(name)
      local f = os.tmpname()
      S.write(f, core.json_encode({ tag = { tag = name, tagType = "contact", description = "" } }))
      S.sh("curl -s -o /dev/null -X POST -H 'Api-Token: " .. S.EMU_TOKEN .. "' -H 'Content-Type: application/json' "
        .. "--data-binary @" .. f .. " " .. emu.url .. "/api/3/tags")
      os.remove(f)
    end
    for i = 1, 120 do create("vip member " .. i) end
    create("VIP")
    local before = #emu.requests()
    local by = deliver(cfg, st, identify("many@example.com", "t1", { tags = { "vip" } }) .. "\n")
    assert.are.equal("delivered", by.t1.outcome, by.t1.reason)
    assert.are.same({ "VIP" }, state(emu).contact_tags["many@example.com"])
    assert.are.equal(1, state(emu).tag_counts.vip)
    assert.are.equal(0, #requests(emu, before, "POST", "/api/3/tags"))
  end)

  it("creates each new tag once per account when 20 events race for it", function()
    cfg = config(emu, "tags: true")
    local evs = {}
    for i = 1, 20 do
      -- both shapes of traits.tags: a list and a comma-separated string
      local tags = i % 2 == 0 and { "Gold", "Early Bird" } or "Gold, Early Bird"
      evs[i] = identify(("racer%d@example.com"):format(i), "r" .. i, { tags = tags })
    end
    -- answers take 20 ms, so the events' requests overlap as with a real vendor
    emu.faults({ latency_ms = 20 })
    -- one by one (--no-batch): 20 identifies waiting would otherwise be one bulk import
    local _, lines = deliver(cfg, st, ndjson(evs), " --concurrency 16 --no-batch")
    assert.are.equal(20, #lines)
    for _, l in ipairs(lines) do assert.are.equal("delivered", l.outcome, l.reason) end
    local s = state(emu)
    assert.are.same({ gold = 1, ["early bird"] = 1 }, s.tag_counts)
    for i = 1, 20 do
      local email = ("racer%d@example.com"):format(i)
      assert.are.same({ "Early Bird", "Gold" }, sorted(s.contact_tags[email] or {}), email)
    end
    -- created once, looked up once, not refused: the events shared the answers;
    -- and each contact tagged once (a re-run that found the tag's id in
    -- ctx.cache does not send its contactTags again)
    assert.are.equal(2, count(emu, "POST", "/api/3/tags"))
    assert.are.equal(2, count(emu, "GET", "/api/3/tags"))
    assert.are.equal(40, count(emu, "POST", "/api/3/contactTags"))
    assert.are.equal(20, count(emu, "POST", "/api/3/contact/sync"))
    -- they did race: several contacts were synced before the first tag existed
    local synced = 0
    for _, r in ipairs(emu.requests()) do
      if r.path == "/api/3/tags" then break end
      if r.path == "/api/3/contact/sync" then synced = synced + 1 end
    end
    assert.is_true(synced >= 2, "only " .. synced .. " events in flight before the first tag lookup")
  end)

  it("sends no tag lookup or create once the cache is warm #serve", function()
    local srv = S.start_server({ rate = 500, args = "--no-batch" })   -- the per-event path's cache
    finally(function() srv.stop() end)
    local account = S.emulator_account(emu, 0)
    account.tags = true
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("depth", account))
    assert.are.equal(201, status, core.json_encode(it))
    local function batch(from, to, tags)
      local evs = {}
      for i = from, to do evs[#evs + 1] = identify(("warm%d@example.com"):format(i), "w" .. i, { tags = tags }) end
      local st2, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", ndjson(evs))
      assert.are.equal(202, st2, core.json_encode(res))
    end
    local function tagged(n)
      return S.eventually(function()
        local k = 0
        for _, tags in pairs(state(emu).contact_tags) do if #tags == 2 then k = k + 1 end end
        return k >= n
      end, 15)
    end
    batch(1, 10, { "Gold", "Early Bird" })
    assert.is_truthy(tagged(10), "the first batch was not tagged")
    local before = #emu.requests()
    batch(11, 20, { "gold", "EARLY BIRD" })   -- the same tags in another case
    assert.is_truthy(tagged(20), "the second batch was not tagged")
    local n = { sync = 0, ctags = 0, other = {} }
    for _, r in ipairs(requests(emu, before)) do
      if r.path == "/api/3/contact/sync" then n.sync = n.sync + 1
      elseif r.path == "/api/3/contactTags" then n.ctags = n.ctags + 1
      else n.other[#n.other + 1] = r.method .. " " .. r.path end
    end
    assert.are.same({}, n.other)   -- no GET or POST /api/3/tags
    assert.are.equal(10, n.sync)
    assert.are.equal(20, n.ctags)
    assert.are.same({ gold = 1, ["early bird"] = 1 }, state(emu).tag_counts)
  end)

  it("a warm identify with lists, tags and custom fields unchanged is one request, fields inline #serve", function()
    local srv = S.start_server({ rate = 500 })
    finally(function() srv.stop() end)
    local account = S.emulator_account(emu, 0)
    account.lists = { 1, 2 }
    account.tags = true
    account.custom_fields = { birthday = "BIRTHDAY", plan = "Plan", interests = "Interests" }
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install",
      S.install_body("depth", account))
    assert.are.equal(201, status, core.json_encode(it))
    local traits = { first_name = "Wes", tags = { "vip", "newsletter" }, birthday = "1990-05-17", plan = "Pro",
                     interests = { "Shoes", "Hats" } }
    local function post(id)
      local st2, res = srv.call("POST", "/v1/integrations/" .. it.id .. "/events", identify("wes@example.com", id, traits))
      assert.are.equal(202, st2, core.json_encode(res))
    end
    local function delivered(n)
      return S.eventually(function()
        local _, m = srv.call("GET", "/metrics")
        return tonumber(tostring(m):match("\nblueprint_events_delivered_total (%d+)") or 0) >= n
      end, 15)
    end
    post("w1")
    assert.is_truthy(delivered(1), "the first identify was not delivered")
    local before = #emu.requests()
    post("w2")
    assert.is_truthy(delivered(2), "the second identify was not delivered")
    local sent = requests(emu, before)
    assert.are.equal(1, #sent, core.json_encode(sent))
    assert.are.equal("/api/3/contact/sync", sent[1].path)
    assert.are.equal(3, #core.json_decode(sent[1].body).contact.fieldValues)
    assert.are.equal(0, count(emu, "POST", "/api/3/fieldValues"))
    assert.are.same({ Birthday = "1990-05-17", Plan = "Pro", Interests = "||Shoes||Hats||" },
                    state(emu).field_values["wes@example.com"])
  end)

  it("writes custom field values in the field's type; a value that does not fit is a dead letter", function()
    cfg = config(emu, "custom_fields: {birthday: BIRTHDAY, plan: Plan, interests: Interests, signed_up: Signup Date}")
    local by = deliver(cfg, st, ndjson({
      identify("typed@example.com", "f1", { birthday = "1990-05-17T08:30:00Z", plan = "Pro",
                                            interests = { "Shoes", "Bags" } }),
      identify("comma@example.com", "f2", { birthday = 642956400, interests = "Hats, Shoes",
                                            signed_up = 1714564800 }),
      identify("wrong@example.com", "f3", { birthday = "1991-01-02", plan = "Enterprise" }),
    }))
    assert.are.equal("delivered", by.f1.outcome, by.f1.reason)
    assert.are.equal("delivered", by.f2.outcome, by.f2.reason)
    local values = state(emu).field_values
    assert.are.same({ Birthday = "1990-05-17", Plan = "Pro", Interests = "||Shoes||Bags||" },
                    values["typed@example.com"])
    assert.are.same({ Birthday = "1990-05-17", Interests = "||Hats||Shoes||", ["Signup Date"] = "2024-05-01T12:00:00Z" },
                    values["comma@example.com"])
    -- "Enterprise" is not one of Plan's options
    assert.are.equal("dead_letter", by.f3.outcome)
    assert.are.equal(422, by.f3.status)
    assert.matches("HTTP 422", by.f3.reason, 1, true)
    assert.matches("Plan is a dropdown field", by.f3.response, 1, true)
    assert.is_nil((values["wrong@example.com"] or {}).Plan)
    -- the fields were read once for the three events
    assert.are.equal(1, count(emu, "GET", "/api/3/fields"))
  end)

  it("creates a Deep Data order in cents, once, even when the same order comes again", function()
    cfg = config(emu, "deep_data: true")
    local by = deliver(cfg, st, order("o1"))
    assert.are.equal("delivered", by.o1.outcome, by.o1.reason)
    local s = state(emu)
    assert.are.equal(1, #s.connections)
    assert.are.equal(1, #s.customers)
    assert.are.equal(1, #s.orders)
    local o = s.orders[1]
    assert.are.equal("A-100", o.externalid)
    assert.are.equal(1, o.source)
    assert.are.equal(4997, o.totalPrice)
    assert.are.equal("EUR", o.currency)
    assert.are.equal("buyer@example.com", o.email)
    local cents = {}
    for _, p in ipairs(o.products) do cents[p.externalid] = { p.price, p.quantity } end
    assert.are.same({ p1 = { 1999, 2 }, p2 = { 999, 1 }, p3 = { 1000, 1 } }, cents)
    -- the purchase is tracked too
    assert.are.equal(1, count(emu, "POST", "/event"))

    -- the same order again under a new message id: found by the documented
    -- lookup (filters[externalid], filters[connectionid]), not sent again
    by = deliver(cfg, st, order("o1-again"))
    assert.are.equal("delivered", by["o1-again"].outcome, by["o1-again"].reason)
    local answered
    for _, r in ipairs(by["o1-again"].requests) do
      if r.url:match("/api/3/ecomOrders%?") then answered = r.answer end
    end
    assert.are.equal(200, answered.status)
    assert.matches('"externalid":"A-100"', answered.body, 1, true)
    assert.are.equal(1, count(emu, "POST", "/api/3/ecomOrders"))
    s = state(emu)
    assert.are.equal(1, #s.orders)
    assert.are.equal(1, #s.customers)
    assert.are.equal(1, #s.connections)
  end)

  it("creates the order once when delivery is killed between its customer step and the order's answer", function()
    cfg = config(emu, "deep_data: true")
    -- every answer takes 600 ms: the kill lands while the order is held
    emu.faults({ latency_ms = 600 })
    local inf, outf, pidf = os.tmpname(), os.tmpname(), os.tmpname()
    S.write(inf, order("k1"))
    os.execute(S.bin .. " deliver " .. S.AC .. " --config " .. cfg .. " --state " .. st .. FAST .. " < " .. inf
      .. " > " .. outf .. " 2>/dev/null & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    finally(function() os.execute("kill -KILL " .. pid .. " 2>/dev/null"); os.remove(inf); os.remove(outf); os.remove(pidf) end)
    local held = S.eventually(function() return count(emu, "POST", "/api/3/ecomOrders") > 0 end, 15)
    assert.is_truthy(held, "the order request never reached the emulator")
    os.execute("kill -KILL " .. pid)
    local f = io.open(outf)
    assert.are.equal("", f:read("a"), "the run finished before the kill")
    f:close()
    assert.are.equal(1, #state(emu).orders)    -- created; its answer never arrived
    emu.faults({ latency_ms = 0 })
    local before = #emu.requests()

    local by = deliver(cfg, st, "")
    assert.are.equal("delivered", by.k1.outcome, by.k1.reason)
    -- resumed at the order (or, when the kill landed within the 10 ms group
    -- commit after the previous answer, at the order's lookup, which finds
    -- it, or at the customer create: 422, it exists); the connection steps,
    -- answered long before, are not sent again
    local again = requests(emu, before)
    local first = again[1].method .. " " .. again[1].path
    assert.is_truthy(first == "POST /api/3/ecomOrders" or first == "GET /api/3/ecomOrders"
      or first == "POST /api/3/ecomCustomers", first)
    for _, r in ipairs(again) do
      assert.is_nil(r.path:match("^/api/3/connections"), "a connection step was sent again")
      if r.method == "POST" and r.path ~= "/api/3/contact/sync" and r.path ~= "/event" then
        assert.are.equal(422, r.status, r.path)   -- created before the kill: a duplicate
      end
    end
    assert.is_true(#requests(emu, before, "POST", "/api/3/ecomOrders") <= 1)
    assert.are.equal(1, count(emu, "GET", ORDER_STEPS[1][2]))
    assert.are.equal(1, count(emu, "POST", ORDER_STEPS[2][2]))
    local s = state(emu)
    assert.are.equal(1, #s.orders)
    assert.are.equal(1, #s.customers)
    assert.are.equal(1, #s.connections)
    assert.are.equal(1, count(emu, "POST", "/event"))
  end)

  it("retries a failing step 3 of 6 from step 3", function()
    cfg = config(emu, "deep_data: true")
    emu.faults({ fail_next = 2, status = 503, path = "/api/3/ecomCustomers" })
    local by = deliver(cfg, st, order("s1"))
    assert.are.equal("delivered", by.s1.outcome, by.s1.reason)
    -- steps 1-2 once, step 3 three times (503, 503, 200), steps 4-6 once
    local sent = {}
    for _, r in ipairs(emu.requests()) do
      if r.path:match("^/api/3/ec") or r.path:match("^/api/3/conn") then
        sent[#sent + 1] = ("%s %s %d"):format(r.method, r.path, r.status)
      end
    end
    assert.are.same({
      "GET /api/3/connections 200", "POST /api/3/connections 200",
      "GET /api/3/ecomCustomers 503", "GET /api/3/ecomCustomers 503", "GET /api/3/ecomCustomers 200",
      "POST /api/3/ecomCustomers 201", "GET /api/3/ecomOrders 200", "POST /api/3/ecomOrders 201",
    }, sent)
    assert.are.equal(1, count(emu, "POST", "/api/3/contact/sync"))
    assert.are.equal(1, count(emu, "POST", "/event"))
    -- the outcome line lists every step with its answer
    local steps = {}
    for _, r in ipairs(by.s1.requests) do
      if r.step then
        assert.is_table(r.answer, r.url)
        steps[#steps + 1] = ("%s %s %d"):format(r.method, r.url:match("^https?://[^/]+([^?]*)"), r.answer.status)
      end
    end
    assert.are.same({
      "GET /api/3/connections 200", "POST /api/3/connections 200", "GET /api/3/ecomCustomers 200",
      "POST /api/3/ecomCustomers 201", "GET /api/3/ecomOrders 200", "POST /api/3/ecomOrders 201",
    }, steps)
    assert.are.equal(1, #state(emu).orders)
  end)
end)

-- ctx.cache.set's options table: { ttl = s, durable = true }; anything else
-- is refused with the option's name (the event is an error, not a crash).
describe("ctx.cache.set options #cli", function()
  it("takes { ttl, durable } and names an unknown or mistyped option", function()
    local dir = S.tmpdir()
    finally(function() os.execute("rm -rf " .. dir) end)
    S.write(dir .. "/blueprint.yaml", table.concat({
      "vendor: cachetest", "name: Cache test", "category: test", "status: alpha",
      "consent_category: marketing", "config:", "  - key: api_url", "    type: url", "    required: true",
      "events:", "  set:", "    type: track", "    mapping: set.lua" }, "\n") .. "\n")
    S.write(dir .. "/set.lua", [[
return function(event, ctx)
  local how = event.properties.how
  if how == "table" then ctx.cache.set("k", { a = 1 }, { ttl = 60, durable = true })
  elseif how == "number" then ctx.cache.set("k", 1, 60)
  elseif how == "unknown" then ctx.cache.set("k", 1, { forever = true })
  else ctx.cache.set("k", 1, { durable = "yes" }) end
  return { method = "POST", url = ctx.config.api_url .. "/x", json = { ok = true } }
end
]])
    local e = assert(core.open_text(dir, "api_url: http://127.0.0.1:9\n"))
    local function run(how)
      return core.json_decode(e:run(core.json_encode({ type = "track", event = "set", messageId = how,
        properties = { how = how }, context = { consent = { marketing = true } } })))
    end
    assert.are.equal("deliver", run("table").outcome)
    assert.are.equal("deliver", run("number").outcome)
    local bad = run("unknown")
    assert.are.equal("error", bad.outcome)
    assert.matches("unknown option 'forever' (expected ttl or durable)", bad.reason, 1, true)
    bad = run("mistyped")
    assert.are.equal("error", bad.outcome)
    assert.matches("opts.durable must be true or false", bad.reason, 1, true)
  end)
end)

-- Deep Data orders and Event Tracking as ActiveCampaign's reference documents
-- them (docs/activecampaign.md, Deep Data and Event Tracking).  The emulator follows the reference;
-- where the reference is silent (a repeated externalid, /event while Event
-- Tracking is off) it is switched to each answer the vendor might give.
describe("ActiveCampaign Deep Data and Event Tracking as documented #cli", function()
  local emu, cfg, st
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    st = S.tmpdir()
    cfg = config(emu, "deep_data: true")
  end)
  after_each(function()
    emu.stop()
    os.remove(cfg)
    os.execute("rm -rf " .. st)
  end)

  -- An Order Completed written as JSON text (so `[]` stays an array):
  -- `props` is the properties object's inside, `top` more envelope members.
  local function order_text(id, props, top)
    return '{"type":"track","event":"Order Completed","messageId":"' .. id .. '",'
      .. (top or '"timestamp":"2024-05-01T12:00:00Z"') .. ',"properties":{' .. props .. '},'
      .. '"context":{"traits":{"email":"buyer@example.com"},"consent":{"marketing":true}}}\n'
  end

  local function put_tracking(enabled)
    local p = io.popen("curl -s -X PUT -H 'Api-Token: " .. S.EMU_TOKEN .. "' --data-binary '{\"eventTracking\":{\"enabled\":"
      .. tostring(enabled) .. "}}' " .. emu.url .. "/api/3/eventTracking")
    p:read("a")
    p:close()
  end

  it("creates an order without products (absent or []) and still sends its purchase", function()
    local by = deliver(cfg, st, order_text("np1", '"order_id":"N-1","total":"12.50","currency":"usd"')
      .. order_text("np2", '"order_id":"N-2","total":"7","currency":"usd","products":[]'))
    for _, id in ipairs({ "np1", "np2" }) do
      assert.are.equal("delivered", by[id].outcome, by[id].reason)
    end
    local s = state(emu)
    assert.are.equal(2, #s.orders)
    assert.are.same({}, s.orders[1].products)
    assert.are.equal(1250, s.orders[1].totalPrice)
    -- never an object where the reference wants an array
    for _, r in ipairs(requests(emu, 0, "POST", "/api/3/ecomOrders")) do
      assert.is_nil(r.body:find('"orderProducts":{}', 1, true), r.body)
    end
    assert.are.equal(2, count(emu, "POST", "/event"))
  end)

  it("still sends the purchase when ActiveCampaign refuses the order, and says why in the outcome", function()
    -- a currency that is not a 3-letter code: create-order answers 422
    local by = deliver(cfg, st, order_text("bad1", '"order_id":"B-1","total":"5","currency":"euro"'))
    assert.are.equal("delivered", by.bad1.outcome, by.bad1.reason)
    assert.are.equal(0, #state(emu).orders)
    assert.are.equal(1, count(emu, "POST", "/event"))
    local said = {}
    for _, l in ipairs(by.bad1.logs or {}) do said[#said + 1] = l.msg end
    assert.matches("Deep Data refused the order (HTTP 422)", table.concat(said, "\n"), 1, true)
    assert.matches("currency", table.concat(said, "\n"), 1, true)
  end)

  for _, mode in ipairs({ "refuse", "accept" }) do
    it("counts an order once when the vendor would " .. mode .. " a repeated externalid", function()
      emu.faults({ ecom_duplicates = mode })
      local by = deliver(cfg, st, order("d1"))
      assert.are.equal("delivered", by.d1.outcome, by.d1.reason)
      -- again under a new message id, in a new process (nothing cached)
      by = deliver(cfg, st, order("d1-again"))
      assert.are.equal("delivered", by["d1-again"].outcome, by["d1-again"].reason)
      local s = state(emu)
      assert.are.equal(1, #s.orders)
      assert.are.equal(1, #s.customers)
      assert.are.equal(1, #s.connections)
      -- found by the documented lookup, not created again
      assert.are.equal(1, count(emu, "POST", "/api/3/ecomOrders"))
      local looked = requests(emu, 0, "GET", "/api/3/ecomOrders")
      assert.are.equal(2, #looked)
      assert.are.equal(2, count(emu, "POST", "/event"))
    end)
  end

  it("creates the order once when 10 deliveries of it race, even if the vendor accepts repeats", function()
    emu.faults({ ecom_duplicates = "accept" })
    local input = {}
    for i = 1, 10 do input[i] = order("r" .. i) end
    local by = deliver(cfg, st, table.concat(input))
    for i = 1, 10 do assert.are.equal("delivered", by["r" .. i].outcome, by["r" .. i].reason) end
    local s = state(emu)
    assert.are.equal(1, #s.orders)
    assert.are.equal(1, #s.customers)
    assert.are.equal(1, #s.connections)
  end)

  it("totals with tax and shipping, dates in ISO 8601, names every product, marks a late order historical", function()
    local by = deliver(cfg, st,
      -- revenue excludes tax and shipping: totalPrice adds them
      order_text("v1", '"order_id":"V-1","revenue":"20","tax":"1.60","shipping":"4.99","currency":"usd",'
        .. '"products":[{"sku":"SKU-9","price":"20","quantity":1}]',
        '"timestamp":"2024-05-01T16:00:00+02:00","receivedAt":"2024-05-01T14:00:05Z"')
      -- no timestamp: originalTimestamp; received three days later: historical
      .. order_text("v2", '"order_id":"V-2","total":"5","currency":"usd"',
        '"originalTimestamp":"2024-04-28T09:30:00Z","receivedAt":"2024-05-01T09:30:00Z"'))
    assert.are.equal("delivered", by.v1.outcome, by.v1.reason)
    assert.are.equal("delivered", by.v2.outcome, by.v2.reason)
    local s = state(emu)
    local o = {}
    for _, x in ipairs(s.orders) do o[x.externalid] = x end
    assert.are.equal(2659, o["V-1"].totalPrice)
    assert.are.equal(160, o["V-1"].taxAmount)
    assert.are.equal(499, o["V-1"].shippingAmount)
    assert.are.equal(1, o["V-1"].source)
    assert.are.equal("2024-05-01T14:00:00+00:00", o["V-1"].externalCreatedDate)
    assert.are.equal("SKU-9", o["V-1"].products[1].name)
    assert.are.equal(0, o["V-2"].source)
    assert.are.equal("2024-04-28T09:30:00+00:00", o["V-2"].externalCreatedDate)
    assert.are.equal(2, count(emu, "POST", "/event"))
  end)

  for _, answer in ipairs({ "accept", "refuse" }) do
    it("dead-letters tracked events while Event Tracking is switched off (/event would " .. answer .. ")", function()
      emu.faults({ tracking_off = answer })
      put_tracking(false)
      local by = deliver(cfg, st, '{"type":"page","messageId":"t1","properties":{"email":"a@example.com",'
        .. '"url":"https://shop.example.com/"},"context":{"consent":{"marketing":true}}}\n')
      assert.are.equal("dead_letter", by.t1.outcome, by.t1.reason)
      assert.matches("Event Tracking is switched off", by.t1.reason, 1, true)
      assert.are.equal(0, count(emu, "POST", "/event"))
      -- switched on, the next event goes through
      put_tracking(true)
      by = deliver(cfg, st, '{"type":"page","messageId":"t2","properties":{"email":"a@example.com",'
        .. '"url":"https://shop.example.com/"},"context":{"consent":{"marketing":true}}}\n')
      assert.are.equal("delivered", by.t2.outcome, by.t2.reason)
      assert.are.equal(1, count(emu, "POST", "/event"))
    end)
  end
end)
