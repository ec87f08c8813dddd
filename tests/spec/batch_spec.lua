-- Batches (blueprint.yaml batch:): the key read strictly, a batch mapping's
-- request and its reader, dry-run --batch, test cases that show a batch,
-- and ActiveCampaign's identify_batch.lua against the emulator's bulk import.
local S = require("support")

local WEBHOOK = "blueprints/webhook"

-- A copy of the webhook blueprint whose batch: section is `batch` (YAML).
local function webhook_with(batch, files)
  local dir = S.tmpdir()
  assert(os.execute("cp -r " .. WEBHOOK .. "/. " .. dir))
  local f = assert(io.open(dir .. "/blueprint.yaml"))
  local yaml = f:read("a"):gsub("\nbatch:.*$", "\n")
  f:close()
  S.write(dir .. "/blueprint.yaml", yaml .. (batch or ""))
  for name, text in pairs(files or {}) do S.write(dir .. "/" .. name, text) end
  return dir
end

local function config(extra)
  local p = os.tmpname()
  S.write(p, "url: https://hooks.example.com/in\nconsent: {default_policy: allow}\n" .. (extra or ""))
  return p
end

local function events(n, from)
  local t = {}
  for i = 1, n do
    t[i] = ('{"type":"identify","messageId":"m%d","traits":{"email":"p%d@example.com"}}'):format((from or 0) + i, i)
  end
  return table.concat(t, "\n") .. "\n"
end

local function dry(dir, cfg, stdin, args)
  local out, err, code = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. cfg .. " - " .. (args or "--batch"), stdin)
  local lines = {}
  for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
  return lines, err, code
end

describe("blueprint.yaml batch: #cli", function()
  local function refused(batch, files)
    local _, err, code = dry(webhook_with(batch, files), config(), events(1))
    assert.are.equal(2, code, err)
    return err
  end

  it("refuses an unknown key with the known ones and the closest", function()
    local err = refused("batch: {events: [identify], mapping: event_batch.lua, max_events: 5, min_event: 2}\n")
    assert.matches("unknown key 'min_event' in 'batch' (known keys: events, mapping, max_events, min_events, "
      .. "max_wait_ms, max_per_minute, enabled_by); did you mean 'min_events'?", err, 1, true)
  end)

  it("refuses events that are not rows of the event table, with the closest", function()
    local err = refused("batch: {events: [identfy], mapping: event_batch.lua, max_events: 5}\n")
    assert.matches("batch.events: 'identfy' is not a row of the event table (rows: identify, page, screen, group, "
      .. "custom); did you mean 'identify'?", err, 1, true)
    assert.matches("names an event twice",
      refused("batch: {events: [page, page], mapping: event_batch.lua, max_events: 5}\n"), 1, true)
    assert.matches("missing required key 'events' in 'batch'",
      refused("batch: {mapping: event_batch.lua, max_events: 5}\n"), 1, true)
  end)

  it("refuses bounds that are not whole numbers in range, and a missing max_events", function()
    assert.matches("batch.min_events must be a whole number from 2 to 5",
      refused("batch: {events: identify, mapping: event_batch.lua, max_events: 5, min_events: 6}\n"), 1, true)
    assert.matches("batch.max_events must be a whole number from 2",
      refused("batch: {events: identify, mapping: event_batch.lua, max_events: \"many\"}\n"), 1, true)
    assert.matches("batch.max_wait_ms must be a whole number from 0",
      refused("batch: {events: identify, mapping: event_batch.lua, max_events: 5, max_wait_ms: -1}\n"), 1, true)
    assert.matches("missing required key 'max_events' in 'batch'",
      refused("batch: {events: identify, mapping: event_batch.lua}\n"), 1, true)
  end)

  it("refuses max_per_minute outside 1 to 10000, naming its line, and takes one inside", function()
    for _, bad in ipairs({ "0", "10001", "-3", "2.5", "\"100\"", "[100]" }) do
      local dir = webhook_with("batch:\n  events: identify\n  mapping: event_batch.lua\n  max_events: 5\n"
        .. "  max_per_minute: " .. bad .. "\n")
      local _, err, code = dry(dir, config(), events(1))
      assert.are.equal(2, code, bad .. ": " .. err)
      local line = 0
      for l in io.lines(dir .. "/blueprint.yaml") do
        line = line + 1
        if l:find("max_per_minute", 1, true) then break end
      end
      assert.matches("blueprint.yaml:" .. line .. ": batch.max_per_minute must be a whole number from 1 to 10000", err,
        1, true)
    end
    assert.matches("unknown key 'max_per_minut' in 'batch' (known keys: events, mapping, max_events, min_events, "
      .. "max_wait_ms, max_per_minute, enabled_by); did you mean 'max_per_minute'?",
      refused("batch: {events: identify, mapping: event_batch.lua, max_events: 5, max_per_minut: 100}\n"), 1, true)
    local _, err, code = dry(webhook_with("batch: {events: identify, mapping: event_batch.lua, max_events: 5, "
      .. "max_per_minute: 10000}\n"), config(), events(1))
    assert.are.equal(0, code, err)
  end)

  it("refuses a mapping that is not there and a switch that is not a boolean field", function()
    assert.matches("batch.mapping 'nope.lua' does not exist",
      refused("batch: {events: identify, mapping: nope.lua, max_events: 5}\n"), 1, true)
    assert.matches("batch.enabled_by must name a boolean config field",
      refused("batch: {events: identify, mapping: event_batch.lua, max_events: 5, enabled_by: url}\n"), 1, true)
  end)

  it("says when --batch is asked of a blueprint without batch:", function()
    local _, err, code = dry(webhook_with(""), config(), events(1))
    assert.are.equal(1, code)
    assert.matches("has no batch: in its blueprint.yaml", err, 1, true)
  end)
end)

describe("dry-run --batch #cli", function()
  local BATCH = "batch: {events: [identify, custom], mapping: event_batch.lua, max_events: 3, min_events: 2, "
    .. "enabled_by: batch_events}\n"

  it("batches the events the batch takes, at most max_events a batch, and shows the others as they are", function()
    local dir = webhook_with(BATCH)
    local stdin = events(2) .. '{"type":"page","messageId":"p1","name":"Home"}\n' .. events(2, 2)
    local lines = dry(dir, config("batch_events: true\n"), stdin)
    assert.are.equal(3, #lines)
    assert.are.same({ "page", 2 }, { lines[1].type, lines[1].index })   -- not taken: at once
    assert.are.same({ "batch", "deliver" }, { lines[2].type, lines[2].outcome })
    assert.are.same({ 0, 1, 3 }, { lines[2].batch[1].index, lines[2].batch[2].index, lines[2].batch[3].index })
    assert.are.same({ "m1", "delivered" }, { lines[2].batch[1].message_id, lines[2].batch[1].result })
    local body = S.core.json_decode(lines[2].requests[1].body)
    assert.are.same({ "m1", "m2", "m3" }, { body[1].messageId, body[2].messageId, body[3].messageId })
    assert.are.equal(200, lines[2].requests[1].answer.status)
    assert.are.same({ "identify", 4 }, { lines[3].type, lines[3].index })   -- one left: below min_events, alone
  end)

  it("sends one by one what is below min_events, and everything one by one with the switch off", function()
    local dir = webhook_with((BATCH:gsub("min_events: 2", "min_events: 3")))
    local lines = dry(dir, config("batch_events: true\n"), events(2))
    assert.are.same({ "identify", "identify" }, { lines[1].type, lines[2].type })
    assert.are.same({ 0, 1 }, { lines[1].index, lines[2].index })
    lines = dry(dir, config(), events(5))
    assert.are.equal(5, #lines)
    for _, l in ipairs(lines) do assert.are.equal("identify", l.type) end
  end)

  it("takes track events of the custom: mapping when batch.events names custom", function()
    local dir = webhook_with(BATCH)
    local track = '{"type":"track","event":"Signed Up","messageId":"t%d","properties":{}}\n'
    local lines = dry(dir, config("batch_events: true\nevents: {Signed Up: {enabled: true}}\n"),
      track:format(1) .. track:format(2))
    assert.are.equal(1, #lines)
    assert.are.equal("batch", lines[1].type)
  end)

  it("signs the array like a single request", function()
    local lines = dry(WEBHOOK, config("batch_events: true\nsigning_secret: s3cret\n"), events(12))
    assert.are.equal(1, #lines)
    local r = lines[1].requests[1]
    assert.are.equal("[hmac-sha256 of the body with secret 'signing_secret']", r.headers["X-Signature-256"])
    assert.are.equal(12, #S.core.json_decode(r.body))
  end)
end)

describe("a batch mapping's reader #cli", function()
  local function with_reader(reader)
    return webhook_with("batch: {events: identify, mapping: b.lua, max_events: 10, min_events: 2}\n", {
      ["b.lua"] = "return function(events, ctx)\n  return { url = ctx.config.url, json = { n = #events } }, "
        .. reader .. "\nend\n",
    })
  end

  it("gives each event the result the reader says: delivered, failed, retry, drop", function()
    local dir = with_reader([[function(answer)
      return { ctx.delivered(), ctx.failed("no such thing"), ctx.retry("later please"), ctx.drop("not wanted") }
    end]])
    local lines = dry(dir, config(), events(4))
    local b = lines[1].batch
    assert.are.same({ "delivered", "failed", "retry", "dropped" }, { b[1].result, b[2].result, b[3].result, b[4].result })
    assert.are.same({ "no such thing", "later please", "not wanted" }, { b[2].reason, b[3].reason, b[4].reason })
  end)

  it("follows ctx.later: the status request is sent and read the same way", function()
    local dir = with_reader([[function(answer)
      if not answer.url:match("status") then return ctx.later({ method = "GET", url = ctx.config.url .. "/status" }) end
      local r = {}
      for i = 1, 2 do r[i] = ctx.delivered() end
      return r
    end]])
    local lines = dry(dir, config(), events(2))
    local req = lines[1].requests
    assert.are.same({ "POST", "GET" }, { req[1].method, req[2].method })
    assert.are.equal("https://hooks.example.com/in/status", req[2].url)
    assert.are.equal(200, req[2].answer.status)
    assert.are.equal("delivered", lines[1].batch[2].result)
  end)

  it("is an error line naming the file when an event gets no result, or a status request goes elsewhere", function()
    local lines = dry(with_reader("function(answer) return { ctx.delivered() } end"), config(), events(2))
    assert.are.equal("error", lines[1].outcome)
    assert.matches("b.lua: read(answer) gave event 2 no result", lines[1].reason, 1, true)
    assert.is_nil(lines[1].batch[1].result)
    lines = dry(with_reader([[function(answer) return ctx.later({ url = "https://elsewhere.example/x" }) end]]),
      config(), events(2))
    assert.are.equal("error", lines[1].outcome)
    assert.matches("ctx.later: the host 'elsewhere.example'", lines[1].reason, 1, true)
  end)

  it("is an error when the mapping does not return a reader", function()
    local dir = webhook_with("batch: {events: identify, mapping: b.lua, max_events: 10, min_events: 2}\n",
      { ["b.lua"] = "return function(events, ctx) return { url = ctx.config.url } end\n" })
    local lines = dry(dir, config(), events(2))
    assert.matches("b.lua: must return the request and a function that reads its answer", lines[1].reason, 1, true)
  end)
end)

describe("ActiveCampaign's identify_batch.lua #cli", function()
  local function ac_config(extra, api_url, lists)
    local p = os.tmpname()
    S.write(p, "api_url: " .. (api_url or "https://acme.api-us1.com") .. "\napi_key: k-DO-NOT-LEAK\nlists: "
      .. (lists or "[1, 3]") .. "\ntags: true\n"
      .. "custom_fields: {country: Country}\nconsent_field_id: 7\nconsent: {default_policy: allow}\n" .. (extra or ""))
    return p
  end
  local function identifies(n, consent, extra)
    local t = {}
    for i = 1, n do
      t[i] = ('{"type":"identify","messageId":"i%d","traits":{"email":" User%d@Example.com ","first_name":"Ada",'
        .. '"last_name":"","tags":"vip, beta","country":"Wales"%s}%s}'):format(i, i, extra or "",
          consent == nil and "" or (',"context":{"consent":{"marketing":%s}}'):format(consent))
    end
    return table.concat(t, "\n") .. "\n"
  end
  local function contacts(line)
    for _, r in ipairs(line.requests) do
      if r.url:match("bulk_import$") then return S.core.json_decode(r.body).contacts end
    end
  end

  it("imports the contacts with identify's rules: email, names, phone, tags by name, fields by id", function()
    local lines = dry(S.AC, ac_config(), identifies(10, true))
    assert.are.equal(1, #lines)
    local c = contacts(lines[1])
    assert.are.equal(10, #c)
    assert.are.equal("user1@example.com", c[1].email)
    assert.are.equal("Ada", c[1].first_name)
    assert.is_nil(c[1].last_name)   -- "" is left out, as identify does
    assert.are.same({ "vip", "beta" }, c[1].tags)
    assert.are.same({ { id = 7, value = "granted" }, { id = 1, value = "Wales" } }, c[1].fields)
    assert.is_nil(lines[1].requests[1].headers["Api-Token"]:match("DO%-NOT%-LEAK"))
  end)

  it("follows each event's consent: granted subscribes, denied unsubscribes, unknown neither", function()
    local stdin = identifies(4, true) .. identifies(3, nil):gsub('"i(%d)"', '"u%1"')
      .. identifies(3, false):gsub('"i(%d)"', '"d%1"')
    -- denied identifies go alone (consent_denied.lua: a withdrawal never creates a contact)
    local lines = dry(S.AC, ac_config(), stdin)
    local batch
    for _, l in ipairs(lines) do if l.type == "batch" then batch = l end end
    assert.is_nil(batch)   -- 7 taken: below min_events, one by one
    lines = dry(S.AC, ac_config(), identifies(6, true) .. identifies(4, nil):gsub('"i(%d)"', '"u%1"'))
    local c = contacts(lines[1])
    assert.are.same({ { listid = 1 }, { listid = 3 } }, c[1].subscribe)
    assert.is_nil(c[1].unsubscribe)
    assert.is_nil(c[7].subscribe)
    assert.is_nil(c[7].unsubscribe)
    assert.are.same({ id = 7, value = "unknown" }, c[7].fields[1])
  end)

  it("unsubscribes a denied contact when a batch is given one", function()
    -- the core sends denied events to consent_denied.lua one by one; the
    -- batch mapping still says what a denied consent means for an import
    local dir = S.tmpdir()
    assert(os.execute("cp -r " .. S.AC .. "/. " .. dir))
    S.write(dir .. "/probe.lua", "return function(events, ctx)\n"
      .. "  local c = helpers.bulk_contact(events[1], ctx, { state = 'denied' })\n"
      .. "  return helpers.bulk_import(ctx, { c }), function() return { ctx.delivered(), ctx.delivered() } end\nend\n")
    local f = assert(io.open(dir .. "/blueprint.yaml"))
    local yaml = f:read("a"):gsub("mapping: identify_batch.lua", "mapping: probe.lua")
    f:close()
    S.write(dir .. "/blueprint.yaml", yaml:gsub("min_events: 10", "min_events: 2"))
    local lines = dry(dir, ac_config(), identifies(2, true))
    assert.are.same({ { listid = 1 }, { listid = 3 } }, contacts(lines[1])[1].unsubscribe)
  end)

  it("reads the documented answers: queued, then import/info's failure list", function()
    local stdin = identifies(10, true) .. '{"type":"identify","messageId":"bad","traits":{"email":"invalid.email@invalidDomain"}}\n'
    local lines = dry(S.AC, ac_config(), stdin)
    local req = lines[1].requests
    assert.matches("/api/3/import/bulk_import$", req[#req - 1].url)
    assert.matches("/api/3/import/info%?batchId=0f2c8b7e", req[#req].url)
    local b = lines[1].batch
    assert.are.equal(11, #b)
    assert.are.same({ "i1", "delivered" }, { b[1].message_id, b[1].result })
    assert.are.same({ "bad", "failed" }, { b[11].message_id, b[11].result })
  end)

  it("fails the contacts a validation 400 names and sends the others again", function()
    local answers = os.tmpname()
    S.write(answers, '- {method: POST, path: /api/3/import/bulk_import, status: 400, json: {"success": 0, '
      .. '"message": "1 of 10 contacts failed validation", "failureReasons": {"2": ["Invalid email address"]}}}\n')
    local out = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. ac_config() .. " - --batch --answers " .. answers,
      identifies(10, true))
    local b = S.core.json_decode(S.lines(out)[1]).batch
    assert.are.same({ "retry", "retry", "failed" }, { b[1].result, b[2].result, b[3].result })
    assert.are.equal("ActiveCampaign refused the contact: Invalid email address", b[3].reason)
  end)

  it("asks again while the import is not done, and sends the contacts again when it failed", function()
    local answers = os.tmpname()
    S.write(answers, '- {method: GET, path: /api/3/import/info, status: 200, json: {"status": "interrupted", '
      .. '"success": [], "failure": []}}\n')
    local out = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. ac_config() .. " - --batch --answers " .. answers,
      identifies(10, true))
    local line = S.core.json_decode(S.lines(out)[1])
    assert.are.equal("retry", line.batch[1].result)
    assert.matches("interrupted", line.batch[1].reason)
    S.write(answers, '- {method: GET, path: /api/3/import/info, status: 200, json: {"status": "active", '
      .. '"success": [], "failure": []}}\n')
    out = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. ac_config() .. " - --batch --answers " .. answers,
      identifies(10, true))
    line = S.core.json_decode(S.lines(out)[1])
    assert.matches("still queued after 10 status requests", line.reason, 1, true)
    assert.is_nil(line.batch[1].result)
  end)

  it("imports into the emulator exactly what dry-run shows, and reads its answers", function()
    local emu = S.start_emulator("--rate-limit 0 --import-delay-ms 0")
    finally(function() emu.stop() end)
    -- the emulator's lists are 1 and 2; its one custom field example: 1 is a date
    local lines = dry(S.AC, ac_config(nil, emu.url, "[1, 2]"), (identifies(10, true):gsub('"Wales"', '"2000-01-31"')))
    local body = lines[1].requests[#lines[1].requests - 1].body
    local f = os.tmpname()
    S.write(f, body)
    local p = io.popen("curl -s -X POST -H 'Api-Token: " .. S.EMU_TOKEN .. "' -H 'Content-Type: application/json' "
      .. "--data-binary @" .. f .. " " .. emu.url .. "/api/3/import/bulk_import")
    local queued = S.core.json_decode(p:read("a"))
    p:close()
    assert.are.equal(10, queued.queued_contacts)
    local st = S.core.json_decode(io.popen("curl -s -H 'Api-Token: " .. S.EMU_TOKEN .. "' '" .. emu.url
      .. "/api/3/import/info?batchId=" .. queued.batchId .. "'"):read("a"))
    assert.are.equal("completed", st.status)
    assert.are.equal(10, #st.success)
    local state = emu.get("/_emulator/state")
    assert.are.same({ vip = 1, beta = 1 }, state.tag_counts)   -- each tag created once, by name
    assert.are.same({ "vip", "beta" }, state.contact_tags["user10@example.com"])
    assert.are.same({ ["1"] = 1, ["2"] = 1 }, state.memberships["user1@example.com"])
    assert.are.same({ Birthday = "2000-01-31", ["Marketing Consent"] = "granted" }, state.field_values["user1@example.com"])
  end)
end)

describe("blueprint test with a batch case #cli", function()
  it("runs a case with dry-run.args --batch and refuses other arguments", function()
    local dir = webhook_with(nil)
    local f = io.open(WEBHOOK .. "/blueprint.yaml")
    S.write(dir .. "/blueprint.yaml", f:read("a"))
    f:close()
    local case = dir .. "/tests/batched"
    assert(os.execute("mkdir -p " .. case))
    S.write(case .. "/config.yaml", "url: https://hooks.example.com/in\nbatch_events: true\nconsent: {default_policy: allow}\n")
    S.write(case .. "/events.ndjson", events(10))
    S.write(case .. "/dry-run.args", "--batch\n")
    local out, err, code = S.sh(S.bin .. " test " .. dir .. " --case batched --update")
    assert.are.equal(0, code, out .. err)
    local expected = S.lines(io.open(case .. "/expected.ndjson"):read("a"))
    assert.are.equal(1, #expected)
    assert.matches('"type":"batch"', expected[1], 1, true)
    out, err, code = S.sh(S.bin .. " test " .. dir .. " --case batched")
    assert.are.equal(0, code, out .. err)
    S.write(case .. "/dry-run.args", "--decode\n")
    out, err, code = S.sh(S.bin .. " test " .. dir .. " --case batched")
    assert.are_not.equal(0, code)
    assert.matches("dry-run.args: only --batch is known", out .. err, 1, true)
  end)
end)
