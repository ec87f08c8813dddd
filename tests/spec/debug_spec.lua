-- Debuggable mappings: print/ctx.log lines carry the event and file:line,
-- tables print as JSON, the lines travel with the outcome (dry-run, deliver,
-- serve's Live Events), errors in helpers.lua name the calling mapping line,
-- and event views answer next() and ctx.totable().  Tagged #cli so it also
-- runs against the ASan/UBSan build.
local S = require("support")
local core = S.core

local YAML = [[
vendor: dbg
name: Debug
category: test
status: alpha
consent_category: marketing
config:
  - key: api_url
    type: url
    required: true
events:
  logs:
    type: track
    mapping: logs.lua
  views:
    type: track
    mapping: views.lua
  chatty:
    type: track
    mapping: chatty.lua
  helper_error:
    type: track
    mapping: helper_error.lua
]]

local HELPERS = [[
local H = {}
function H.note(ctx, v)
  ctx.log("helper says", v)
end
function H.check(x)
  if not x then
    error("helper needs x")
  end
  return x
end
function H.outer(x)
  local y = H.check(x)
  return y
end
return H
]]

local MAPPINGS = {
  ["logs.lua"] = [[
return function(event, ctx)
  print("hello", 1, true, nil)
  ctx.log("props", event.properties, { b = 1, a = { 1, 2 } })
  local cyc = {}
  cyc.self = cyc
  ctx.log(cyc)
  helpers.note(ctx, event.properties.items)
  return ctx.drop("done")
end
]],
  ["views.lua"] = [[
return function(event, ctx)
  local p = event.properties
  local keys = {}
  local k = next(p)
  while k ~= nil do keys[#keys + 1] = k; k = next(p, k) end
  local items = {}
  local i, v = next(p.items)
  while i do items[#items + 1] = i .. "=" .. v; i, v = next(p.items, i) end
  local t = ctx.totable(p)
  table.sort(t.items)
  table.insert(t.items, 99)
  return { url = ctx.config.api_url, json = {
    keys = keys, items = items, empty = next(p.empty) == nil, len = #p.items, objlen = #p,
    concat = table.concat(p.items, ","), type = type(p), copy_type = type(t), sorted = t.items,
    nested = type(t.nested), nested_x = t.nested.x, same = ctx.totable(42),
  } }
end
]],
  ["chatty.lua"] = [[
return function(event, ctx)
  for i = 1, 60 do ctx.log("line", i) end
  ctx.log(string.rep("y", 10000))
  return ctx.drop("chatty")
end
]],
  ["helper_error.lua"] = [[
return function(event, ctx)
  local x = event.properties.x
  return { url = ctx.config.api_url, json = { x = helpers.outer(x) } }
end
]],
}

local function make_blueprint()
  local dir = S.tmpdir() .. "/dbg"
  assert(os.execute("mkdir -p " .. dir))
  S.write(dir .. "/blueprint.yaml", YAML)
  S.write(dir .. "/helpers.lua", HELPERS)
  for name, text in pairs(MAPPINGS) do S.write(dir .. "/" .. name, text) end
  return dir
end

local function event(name, props, id)
  return core.json_encode({ type = "track", event = name, messageId = id,
    context = { consent = { marketing = true } }, properties = props or {} })
end

describe("mapping logs and views #cli #debug", function()
  local dir, engine, config
  setup(function()
    dir = make_blueprint()
    config = "api_url: http://127.0.0.1:9\n"
    engine = assert(core.open_text(dir, config))
  end)

  it("puts log lines in the outcome with file:line, tables as JSON", function()
    local out = S.run(engine, event("logs", { items = { 3, 1 }, x = "é" }, "m-1"))
    assert.are.equal("drop", out.outcome)
    local logs = out.logs
    assert.are.equal(4, #logs)
    assert.are.same({ at = "logs.lua:2", msg = "hello\t1\ttrue\tnil" }, logs[1])
    assert.are.equal("logs.lua:3", logs[2].at)
    assert.are.equal('props\t{"items":[3,1],"x":"é"}\t{"a":[1,2],"b":1}', logs[2].msg)
    assert.are.same({ at = "logs.lua:6", msg = '{"self":"<cycle>"}' }, logs[3])
    -- a helper's line names the mapping line that called it
    assert.are.same({ at = "helpers.lua:3 (from logs.lua:7)", msg = "helper says\t[3,1]" }, logs[4])
  end)

  it("leaves outcome lines without logs unchanged (no \"logs\" field)", function()
    local out = S.run(engine, event("views", { items = { 2, 1 }, empty = {}, nested = { x = 1 } }))
    assert.are.equal("deliver", out.outcome)
    assert.is_nil(out._line:find('"logs"', 1, true))
  end)

  it("bounds the lines kept per event and says how many were dropped", function()
    local out = S.run(engine, event("chatty"))
    assert.is_true(#out.logs <= 51)
    assert.is_true(#out._line < 24 * 1024)
    local last = out.logs[#out.logs]
    assert.matches("^%(%d+ more lines dropped%)$", last.msg)
    local kept = #out.logs - 1
    assert.are.equal(61 - kept, tonumber(last.msg:match("%d+")))
  end)

  it("lets next, #, table.concat and ctx.totable work on event views", function()
    local out = S.run(engine, event("views", { items = { 3, 1, 2 }, empty = {}, nested = { x = 1 } }))
    assert.are.equal("deliver", out.outcome, out.reason)
    local body = core.json_decode(out.requests[1].body)
    table.sort(body.keys)
    assert.are.same({ "empty", "items", "nested" }, body.keys)
    assert.are.same({ "1=3", "2=1", "3=2" }, body.items)
    assert.is_true(body.empty)
    assert.are.equal(3, body.len)
    assert.are.equal(0, body.objlen)        -- # of an object is 0, as on a Lua table with string keys
    assert.are.equal("3,1,2", body.concat)
    assert.are.equal("userdata", body.type) -- type() tells views apart (README)
    assert.are.equal("table", body.copy_type)
    assert.are.same({ 1, 2, 3, 99 }, body.sorted)
    assert.are.equal("table", body.nested)
    assert.are.equal(1, body.nested_x)
    assert.are.equal(42, body.same)
  end)

  it("names the calling mapping line when helpers.lua raises an error", function()
    local out = S.run(engine, event("helper_error", {}))
    assert.are.equal("error", out.outcome)
    assert.matches("helpers.lua:7: helper needs x", out.reason, 1, true)
    assert.matches("(called from helpers.lua:12, from helper_error.lua:3)", out.reason, 1, true)
    -- the next event runs normally
    assert.are.equal("deliver", S.run(engine, event("helper_error", { x = 1 })).outcome)
  end)

  it("dry-run prints the logs in the outcome line and a human line with the event on stderr", function()
    local cfg = S.tmpdir() .. "/config.yaml"
    S.write(cfg, config)
    local stdin = event("views", { items = {}, empty = {}, nested = {} }) .. "\n"
      .. event("logs", { items = { 1 } }, "msg-7") .. "\n" .. event("logs", { items = { 2 } }) .. "\n"
    local out, err, code = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. cfg, stdin)
    assert.are.equal(0, code, err)
    local lines = S.lines(out)
    assert.are.equal(3, #lines)
    local second = core.json_decode(lines[2])
    assert.are.equal(1, second.index)
    assert.are.equal("msg-7", second.message_id)
    assert.are.equal("logs.lua:2", second.logs[1].at)
    assert.matches("blueprint log [event 1 msg-7] logs.lua:2: hello\t1\ttrue\tnil", err, 1, true)
    assert.matches('blueprint log [event 2] logs.lua:3: props\t{"items":[2]}', err, 1, true)
  end)
end)

describe("mapping logs in serve #cli #serve #debug", function()
  it("a log line in serve appears in Live Events with its messageId, and as a JSON log line", function()
    local emu = S.start_emulator("--rate-limit 0")
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    local page = dir .. "/activecampaign/page.lua"
    local original = io.open(page):read("a")
    S.write(page, (original:gsub("return function%(event, ctx%)\n",
      'return function(event, ctx)\n  ctx.log("page seen", event.context.page)\n', 1)))
    local srv = S.start_server({ blueprints = dir })
    finally(function() srv.stop(); emu.stop() end)
    local status, it = srv.call("POST", "/v1/admin/integration-catalog/activecampaign/install", core.json_encode({
      name = "Logged", variant = "default", delivery_mode = "server_side",
      config = { api_url = emu.url, api_key = S.EMU_TOKEN, event_tracking_account_id = "1000001",
                 event_tracking_key = S.EMU_EVENT_KEY, event_tracking_url = emu.url .. "/event" },
    }))
    assert.are.equal(201, status)
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events",
      '{"type":"page","messageId":"log-me-1","context":{"page":{"url":"https://x.test/a"},'
      .. '"traits":{"email":"log@example.com"},"consent":{"marketing":true}}}')
    local found = S.eventually(function()
      local _, body = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?limit=10")
      for _, e in ipairs(body.events or {}) do
        if e.outcome and e.outcome ~= core.null and e.outcome.logs then return e end
      end
    end, 10)
    assert.is_truthy(found, "no event with logs in Live Events")
    assert.are.equal("log-me-1", found.outcome.message_id)
    assert.are.same({ at = "page.lua:3", msg = 'page seen\t{"url":"https://x.test/a"}' }, found.outcome.logs[1])
    local line
    for l in srv.logs():gmatch("[^\n]+") do
      if l:find('"mapping log"', 1, true) then line = core.json_decode(l) end
    end
    assert.is_truthy(line, "no JSON log line for the mapping's log:\n" .. srv.logs())
    assert.are.equal("info", line.level)
    assert.are.equal("log-me-1", line.message_id)
    assert.are.equal("page.lua:3", line.at)
    assert.are.equal('page seen\t{"url":"https://x.test/a"}', line.log)
  end)
end)
