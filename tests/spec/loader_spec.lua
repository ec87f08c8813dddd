-- Loading blueprints: every way a blueprint can be broken is reported with
-- the file, the line and what is wrong.
local S = require("support")

local YAML = "vendor: t\nname: T\ncategory: c\nstatus: alpha\nconsent_category: marketing\n"
  .. "config:\n  - {key: api_url, type: url, required: true}\n"
  .. "events:\n  page:\n    type: page\n    mapping: page.lua\n"
local GOOD_LUA = "return function(event, ctx)\n  return { url = ctx.config.api_url }\nend\n"

local function blueprint(yaml, files)
  local dir = S.tmpdir()
  if yaml then S.write(dir .. "/blueprint.yaml", yaml) end
  for name, text in pairs(files or {}) do S.write(dir .. "/" .. name, text) end
  return dir
end

local function open(dir) return S.core.open_text(dir, "api_url: https://x.example\n") end

describe("blueprint loading", function()
  it("accepts a minimal blueprint", function()
    assert.is_truthy(open(blueprint(YAML, { ["page.lua"] = GOOD_LUA })))
  end)

  it("reports a missing folder", function()
    local e, err = open("/nonexistent/blueprint")
    assert.is_nil(e)
    assert.matches("not a blueprint folder", err)
  end)

  it("reports a missing blueprint.yaml", function()
    local _, err = open(blueprint(nil, {}))
    assert.matches("blueprint.yaml: cannot open", err, 1, true)
  end)

  it("reports broken YAML with file, line and column", function()
    local dir = blueprint("vendor: t\nname: [unclosed\nstatus: alpha\n", {})
    local _, err = open(dir)
    assert.matches(dir .. "/blueprint.yaml:%d+:%d+: invalid YAML", err)
  end)

  it("reports a missing key", function()
    local _, err = open(blueprint(YAML:gsub("consent_category: marketing\n", ""), { ["page.lua"] = GOOD_LUA }))
    assert.matches("missing required key 'consent_category'", err, 1, true)
  end)

  it("reports a missing Lua file with the line of its event", function()
    local dir = blueprint(YAML, {})
    local _, err = open(dir)
    assert.matches(dir .. "/blueprint.yaml:11: event 'page' maps to 'page.lua', which does not exist", err, 1, true)
  end)

  it("reports a Lua syntax error with file and line", function()
    local dir = blueprint(YAML, { ["page.lua"] = "return function(event, ctx)\n  local x = = 1\nend\n" })
    local _, err = open(dir)
    assert.matches(dir .. "/page.lua:2:", err, 1, true)
  end)

  it("reports a mapping that does not return a function", function()
    local _, err = open(blueprint(YAML, { ["page.lua"] = "return 42\n" }))
    assert.matches("page.lua: must end with 'return function(event, ctx)", err, 1, true)
  end)

  it("reports an error raised while loading a mapping", function()
    local dir = blueprint(YAML, { ["page.lua"] = "local x = nil\nx.y = 1\nreturn function() end\n" })
    local _, err = open(dir)
    assert.matches(dir .. "/page.lua:2:", err, 1, true)
  end)

  it("reports a broken helpers.lua", function()
    local _, err = open(blueprint(YAML, { ["page.lua"] = GOOD_LUA, ["helpers.lua"] = "return 1\n" }))
    assert.matches("helpers.lua: must return a table", err, 1, true)
  end)

  it("refuses precompiled bytecode", function()
    local f = assert(io.popen("printf 'return function() end' | luac5.4 -o - -", "r"))
    local bytecode = f:read("a")
    f:close()
    local _, err = open(blueprint(YAML, { ["page.lua"] = bytecode }))
    assert.matches("binary", err, 1, true)
  end)

  it("reports an unknown field type with its line", function()
    local _, err = open(blueprint(YAML:gsub("type: url", "type: colour"), { ["page.lua"] = GOOD_LUA }))
    assert.matches("blueprint.yaml:7: field type must be", err, 1, true)
  end)

  it("names what is wrong with a request a mapping returns", function()
    local cases = {
      { "{ url = U, colour = 1 }", "unknown request field 'colour'" },
      { "{ url = U, [1] = 2 }", "unknown request field '(not a string)'" },
      { "{ url = U, method = 'FETCH' }", "method must be GET, POST, PUT, PATCH or DELETE, not 'FETCH'" },
      { "{ url = 'ftp://x' }", "url must be an absolute http(s) URL, got 'ftp://x'" },
      { "{ url = U .. ' x' }", "url must not contain spaces" },
      { "{ url = U, once = 5 }", "once must be a string key" },
      { "{ url = U, marks = {} }", "marks must be a string key" },
      { "{ url = U, json = {}, form = {} }", "give only one of json, form or body" },
      { "{ url = U, method = 'GET', json = {} }", "a GET request cannot have a body" },
      { "{ url = U, body = 'x' }", "a raw body needs a Content-Type header" },
      { "{ url = U, body = {} }", "body must be a string" },
      { "{ url = U, headers = { ['a b'] = 'x' } }", "header names must be non-empty strings" },
      { "{ url = U, headers = { A = 'x\\ny' } }", "header 'A' contains a line break" },
      { "{ url = U, form = { a = {} } }", "form field 'a' must be a string or number, not table" },
      { "{ url = U, form = { [1] = 'x' } }", "form field names must be strings" },
      { "{ url = U, json = { 1, a = 2 } }", "mixes array items and named keys" },
    }
    for _, case in ipairs(cases) do
      local lua = "return function(event, ctx)\n  local U = ctx.config.api_url\n  return " .. case[1] .. "\nend\n"
      local e = assert(open(blueprint(YAML, { ["page.lua"] = lua })))
      local out = S.core.json_decode(e:run('{"type":"page","messageId":"m1","context":{"consent":{"marketing":true}}}'))
      assert.are.equal("error", out.outcome, case[1])
      assert.matches(case[2], out.reason, 1, true)
    end
    -- and a good one with every field
    local lua = "return function(event, ctx)\n  return { method = 'PUT', url = ctx.config.api_url, once = 'k',"
      .. " marks = 'k', headers = { ['X-A'] = 1, ['Content-Type'] = 'text/plain' }, body = 'raw' }\nend\n"
    local e = assert(open(blueprint(YAML, { ["page.lua"] = lua })))
    local out = S.core.json_decode(e:run('{"type":"page","messageId":"m1","context":{"consent":{"marketing":true}}}'))
    assert.are.equal("deliver", out.outcome, out.reason)
    assert.are.equal("PUT", out.requests[1].method)
    assert.are.equal("k", out.requests[1].once)
    assert.are.equal("raw", out.requests[1].body)
    assert.are.equal("1", out.requests[1].headers["X-A"])
  end)

  it("ctx.get walks events and tables by dotted path", function()
    local lua = [[
return function(event, ctx)
  local t = { a = { b = { "x", "y" } } }
  return { url = ctx.config.api_url, json = {
    second = ctx.get(event, "properties.products.2.id"),
    zeroth = ctx.get(event, "properties.products.0.id", "none"),
    named = ctx.get(event, "properties.products.x", "none"),
    alias = ctx.get(event, "user_id"),
    deep = ctx.get(event, "context.missing.deep", "dflt"),
    null = ctx.get(event, "properties.nothing", "was null"),
    order = ctx.get(event, "properties.order_id"),
    through_scalar = ctx.get(event, "properties.order_id.x", "none"),
    table = ctx.get(t, "a.b.2"),
    sub = ctx.get(event.properties, "products.1.id"),
  } }
end
]]
    local e = assert(open(blueprint(YAML, { ["page.lua"] = lua })))
    local out = S.core.json_decode(e:run('{"type":"page","messageId":"m1","userId":"u-7","context":{"consent":'
      .. '{"marketing":true}},"properties":{"nothing":null,"order_id":1000000003908460003,'
      .. '"products":[{"id":"p1"},{"id":"p2"}]}}'))
    assert.are.equal("deliver", out.outcome, out.reason)
    assert.are.equal('{"alias":"u-7","deep":"dflt","named":"none","null":"was null","order":1000000003908460003,'
      .. '"second":"p2","sub":"p1","table":"y","through_scalar":"none","zeroth":"none"}', out.requests[1].body)
  end)
end)

-- blueprint.yaml is read strictly: a key the loader does not know is a typo
-- or a setting that would be silently ignored, so it is an error naming the
-- file, the line, the section and the keys allowed there.
describe("strict blueprint.yaml", function()
  local FILES = { ["page.lua"] = GOOD_LUA, ["custom.lua"] = GOOD_LUA }

  local function load_error(yaml)
    local dir = blueprint(yaml, FILES)
    local e, err = open(dir)
    assert.is_nil(e, "loaded although it should not")
    return err, dir
  end

  it("names an unknown key at every depth with file, line, section and the known keys", function()
    local cases = {
      { YAML .. "colour: blue\n", "blueprint.yaml:12: unknown key 'colour' at the top level (known keys: vendor, name," },
      { YAML .. "rate_limit:\n  requests_per_second: 5\n  burst: 10\n",
        "blueprint.yaml:14: unknown key 'burst' in 'rate_limit' (known keys: requests_per_second, scope)" },
      { YAML .. "retry:\n  max_attempts: 3\n  backoff: exponential_full_jitter\n",
        "blueprint.yaml:14: unknown key 'backoff' in 'retry' (known keys: max_attempts)" },
      { YAML:gsub("required: true}", "required: true, secret: yes}"),
        "blueprint.yaml:7: unknown key 'secret' in 'config' (known keys: key, label, type, required, default, help, sent_to)" },
      { YAML:gsub("    mapping: page.lua\n", "    mapping: page.lua\n    mappings: other.lua\n"),
        "blueprint.yaml:12: unknown key 'mappings' in 'events.page' (known keys: type, mapping, enabled)" },
      { YAML .. "custom:\n  mapping: custom.lua\n  enabled: true\n",
        "blueprint.yaml:14: unknown key 'enabled' in 'custom' (known keys: mapping)" },
      { YAML .. "config_rules:\n  togther: [[api_url]]\n", "blueprint.yaml:13: unknown key 'togther' in 'config_rules'" },
      { YAML .. "responses:\n  - when: {status: 200, statuss: 201}\n    outcome: delivered\n    reason: x\n",
        "blueprint.yaml:13: unknown key 'statuss' in 'responses[1].when' (known keys: status, url_contains, "
          .. "content_type, body, json)" },
      { YAML .. "responses:\n  - when: {status: 200}\n    outcome: delivered\n    reason: x\n    why: y\n",
        "blueprint.yaml:16: unknown key 'why' in 'responses[1]' (known keys: when, outcome, reason)" },
    }
    for _, case in ipairs(cases) do
      local err, dir = load_error(case[1])
      assert.matches(dir .. "/" .. case[2], err, 1, true)
    end
  end)

  it("reports a section that is not a map", function()
    assert.matches("blueprint.yaml:12: 'rate_limit' must be a map", load_error(YAML .. "rate_limit: 5\n"), 1, true)
    assert.matches("blueprint.yaml:12: 'retry' must be a map", load_error(YAML .. "retry: [1]\n"), 1, true)
  end)

  it("makes dry-run exit 2 naming the file and line", function()
    local dir = blueprint(YAML .. "rate_limit:\n  requests_per_second: 5\n  scpe: api_url\n", FILES)
    local cfg = dir .. "/config.yaml"
    S.write(cfg, "api_url: https://x.example\n")
    local out, err, code = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. cfg, "")
    assert.are.equal(2, code, err)
    assert.are.equal("", out)
    assert.matches(dir .. "/blueprint.yaml:14: unknown key 'scpe' in 'rate_limit'", err, 1, true)
  end)

  it("refuses a key written twice, naming both lines", function()
    local err, dir = load_error(YAML .. "rate_limit:\n  requests_per_second: 5\n  requests_per_second: 50\n")
    assert.matches(dir .. "/blueprint.yaml:14: key `requests_per_second` is already set at line 13", err, 1, true)
    err, dir = load_error(YAML .. "name: Other\n")
    assert.matches(dir .. "/blueprint.yaml:12: key `name` is already set at line 2", err, 1, true)
  end)

  it("still reads every key the default blueprint uses", function()
    assert.is_truthy(S.core.open_text(S.AC, S.base_config))
  end)

  it("checks the responses rules", function()
    local function rule(r) return YAML .. "responses:\n  - " .. r .. "\n" end
    local cases = {
      { rule("{when: {status: 200}, outcome: fine, reason: x}"),
        ":13: responses: 'outcome' must be delivered, retry, permanent or auth_failure" },
      { rule("{when: {status: 2xy}, outcome: retry, reason: x}"),
        ":13: responses: 'status' must be an HTTP status (200), a class (2xx) or a list of them" },
      { rule("{when: {status: [200, 99]}, outcome: retry, reason: x}"), "'status' must be an HTTP status" },
      { rule("{when: {status: 200}, outcome: retry}"), ":13: missing required key 'reason'" },
      { rule("{outcome: retry, reason: x}"), ":13: missing required key 'when'" },
      { rule("{when: {}, outcome: retry, reason: x}"), "'when' must be a map of conditions" },
      { rule("{when: {body: html}, outcome: retry, reason: x}"), "'body' must be json or not_json" },
      { rule("{when: {url_contains: [a]}, outcome: retry, reason: x}"), "'url_contains' must be a non-empty string" },
      { rule("{when: {json: {a..b: 1}}, outcome: retry, reason: x}"), "a 'json' path is dot-separated keys" },
      { rule("{when: {json: {a: {b: 1}}}, outcome: retry, reason: x}"), "'json' values must be strings, numbers" },
      { rule("{when: {json: {a: []}}, outcome: retry, reason: x}"), "a 'json' value list must not be empty" },
      { rule("{when: {status: 200}, outcome: retry, reason: 'HTTP {code}'}"), "'reason' has an unknown placeholder" },
      { rule("{when: {status: 200}, outcome: retry, reason: 'HTTP {status'}"), "'reason' has an unclosed '{'" },
      { rule("{when: {status: 200}, outcome: retry, reason: '{json.errors.*.code}'}"), "'reason' has a bad {json.PATH}" },
      { YAML .. "responses: {when: 1}\n", ":12: 'responses' must be a list of rules" },
    }
    for _, case in ipairs(cases) do
      assert.matches(case[2], load_error(case[1]), 1, true)
    end
    -- and a good one with every condition
    assert.is_truthy(open(blueprint(rule("{when: {status: [200, 4xx], url_contains: /api/, content_type: json, body: json, "
      .. "json: {errors.*.code: [duplicate, 7, true, null]}}, outcome: permanent, reason: '{status} {json.errors.1.code|x}'}"),
      FILES)))
  end)
end)

-- verify: the mapping install and update send to check a config
-- (docs/blueprints.md, Verify).
describe("blueprint.yaml verify:", function()
  local VERIFY_LUA = "return function(event, ctx)\n  return { method = 'GET', url = ctx.config.api_url .. '/me' }\nend\n"

  it("takes a mapping, which must exist and compile like the others", function()
    assert.is_truthy(open(blueprint(YAML .. "verify:\n  mapping: verify.lua\n",
      { ["page.lua"] = GOOD_LUA, ["verify.lua"] = VERIFY_LUA })))
    local dir = blueprint(YAML .. "verify:\n  mapping: verify.lua\n", { ["page.lua"] = GOOD_LUA })
    local _, err = open(dir)
    assert.matches(dir .. "/blueprint.yaml:13: event 'verify' maps to 'verify.lua', which does not exist", err, 1, true)
    _, err = open(blueprint(YAML .. "verify:\n  mapping: verify.lua\n",
      { ["page.lua"] = GOOD_LUA, ["verify.lua"] = "return function(event, ctx)\n  local = 1\nend\n" }))
    assert.matches("verify.lua:2:", err, 1, true)
    _, err = open(blueprint(YAML .. "verify:\n  mapping: verify.lua\n  timeout: 3\n",
      { ["page.lua"] = GOOD_LUA, ["verify.lua"] = VERIFY_LUA }))
    assert.matches("unknown key 'timeout' in 'verify' (known keys: mapping)", err, 1, true)
  end)

  it("cannot be reached by an event: verify is not an event type", function()
    local dir = "blueprints/activecampaign"
    local out = S.sh(S.bin .. " dry-run " .. dir .. " --config blueprints/activecampaign/tests/all-rows/config.yaml",
      '{"type":"verify","messageId":"v"}\n')
    assert.matches('"outcome":"error"', out, 1, true)   -- not an event type anyone can send
  end)
end)
