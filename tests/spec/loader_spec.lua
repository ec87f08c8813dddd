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
