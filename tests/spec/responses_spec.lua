-- What a vendor answer means is the blueprint's knowledge: blueprint.yaml's
-- responses: rules are tried in order on every answer, the first match
-- decides, and without a match plain HTTP semantics apply (2xx delivered;
-- 408, 429, 5xx retried; 401/403 auth failure; other answers permanent).
-- Driven end to end through `deliver` and the ActiveCampaign emulator, with
-- copies of the ActiveCampaign blueprint whose rules the test writes.
-- Tagged #cli so the run is repeated with the ASan/UBSan build.
local S = require("support")

local FAST = " --rate-limit 200 --retry-base-ms 20"

-- A copy of the ActiveCampaign blueprint with `responses` (YAML text, or
-- nil for none) in place of its own rules and `max_attempts` attempts.
local function ac_copy(responses, max_attempts)
  local dir = S.tmpdir()
  assert(os.execute("cp " .. S.AC .. "/*.lua " .. S.AC .. "/blueprint.yaml " .. dir .. "/"))
  local yaml = assert(io.open(dir .. "/blueprint.yaml")):read("a")
  local own = yaml:find("\nresponses:\n", 1, true)
  local events = yaml:find("\nevents:\n", own, true)
  assert(own and events, "the ActiveCampaign blueprint.yaml has no responses: table before events:")
  yaml = yaml:sub(1, own) .. (responses and ("responses:\n" .. responses) or "") .. yaml:sub(events)
  if max_attempts then yaml = yaml:gsub("max_attempts: %d+", "max_attempts: " .. max_attempts) end
  S.write(dir .. "/blueprint.yaml", yaml)
  return dir
end

describe("responses rules #cli", function()
  local emu, cfg
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    cfg = S.emulator_config(emu)
  end)
  after_each(function()
    emu.stop()
    os.remove(cfg)
  end)

  local function deliver(dir, stdin, config)
    local out, err, code = S.sh(S.bin .. " deliver " .. dir .. " --config " .. (config or cfg) .. " --state "
      .. S.tmpdir() .. FAST, stdin)
    local lines = {}
    for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
    return lines, err, code
  end

  it("keeps ActiveCampaign's rules in its blueprint: without them its quirks are plain HTTP answers", function()
    local plain = ac_copy(nil)
    -- the HTML login page on HTTP 200 is just a 2xx
    emu.faults({ login_html_next = 1 })
    local lines, err, code = deliver(plain, S.identify("h@example.com") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    -- and so is Event Tracking's {"success":0}
    local bad = S.emulator_config(emu, { event_key = "wrong-event-key" })
    lines, err, code = deliver(plain, S.track_json("Order Completed", "k@example.com", '{"order_id":1}') .. "\n", bad)
    os.remove(bad)
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.matches('"success":0', lines[1].response, 1, true)
  end)

  it("applies the blueprint's rules: the login page is an auth failure, success:0 a dead letter", function()
    emu.faults({ login_html_next = 1 })
    local lines, _, code = deliver(S.AC, S.identify("h@example.com") .. "\n")
    assert.are.equal(3, code)
    assert.are.equal("held", lines[1].outcome)
    assert.matches("HTTP 200 with an HTML page instead of JSON (a login page: the API key or API URL is wrong)",
      lines[1].reason, 1, true)
    local bad = S.emulator_config(emu, { event_key = "wrong-event-key" })
    local err
    lines, err, code = deliver(S.AC, S.track_json("Order Completed", "k2@example.com", '{"order_id":1}') .. "\n", bad)
    os.remove(bad)
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.matches("dead letter: the vendor refused the event: Invalid key", lines[1].reason, 1, true)
  end)

  it("matches status lists, URL, content type and JSON fields (any element with *), first rule first", function()
    local dir = ac_copy(table.concat({
      -- a 503 CDN page from the API: permanent here, with a fallback for a field it lacks
      "  - when: {status: [502, 503], url_contains: /api/3/, content_type: HTML, body: not_json}",
      "    outcome: permanent",
      "    reason: 'CDN page {status} ({json.message|no message})'",
      -- a rule that never matches the API's URLs
      "  - when: {status: 4xx, url_contains: /event}",
      "    outcome: delivered",
      "    reason: never",
      -- 422 email_invalid, found in any element of errors: retried here instead of a dead letter
      "  - when: {status: 422, body: json, json: {errors.*.code: [duplicate, email_invalid]}}",
      "    outcome: retry",
      "    reason: 'vendor says {json.errors.1.code}: {json.errors.1.title}'",
      "  - when: {status: 422}",
      "    outcome: permanent",
      "    reason: not reached",
      "",
    }, "\n"), 2)
    emu.faults({ fail_next = 1, status = 503, html = true })
    local lines, err, code = deliver(dir, S.identify("c@example.com") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.are.equal(1, lines[1].attempts)
    assert.matches("dead letter: CDN page 503 (no message)", lines[1].reason, 1, true)

    -- 422 email_invalid: the third rule retries it (the fourth is never reached), then a dead letter
    lines, err, code = deliver(dir, S.identify("nodot@localhost") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("dead_letter", lines[1].outcome)
    assert.are.equal(2, lines[1].attempts)
    assert.matches("after 2 failed attempts: vendor says email_invalid: Contact Email is not a valid email address.",
      lines[1].reason, 1, true)
  end)

  it("can call an answer delivered and leaves other answers to plain HTTP semantics", function()
    local dir = ac_copy(table.concat({
      "  - when: {status: 2xx, json: {contact.email: ok@example.com}}",
      "    outcome: delivered",
      "    reason: 'synced {json.contact.email}'",
      "  - when: {status: 2xx, json: {contact.email: [other@example.com, true, null]}}",
      "    outcome: permanent",
      "    reason: never",
      "",
    }, "\n"))
    local lines, err, code = deliver(dir, S.identify("ok@example.com") .. "\n" .. S.identify("fine@example.com") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal(2, #lines)
    for _, l in ipairs(lines) do assert.are.equal("delivered", l.outcome, l.reason) end
    local reasons = {}
    for _, l in ipairs(lines) do reasons[#reasons + 1] = l.reason end
    table.sort(reasons)
    assert.matches("^delivered %(HTTP 20[01]%)", reasons[1])
    assert.matches("delivered (synced ok@example.com)", reasons[2], 1, true)
    -- 502 and 401 still mean retry and auth failure
    emu.faults({ fail_next = 1, status = 502 })
    lines, err, code = deliver(dir, S.identify("ok@example.com", "again") .. "\n")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", lines[1].outcome)
    assert.are.equal(2, lines[1].attempts)
    local bad = S.emulator_config(emu, { api_key = "wrong-key-123" })
    lines, err, code = deliver(dir, S.identify("ok@example.com", "bad") .. "\n", bad)
    os.remove(bad)
    assert.are.equal(3, code, err)
    assert.are.equal("held", lines[1].outcome)
  end)
end)
