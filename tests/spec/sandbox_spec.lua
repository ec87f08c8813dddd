-- Hostile mappings (tests/hostile/): each costs only its own event an error
-- naming file and line, and the next event runs normally.
local S = require("support")

local engine = assert(S.core.open_text("tests/hostile", "api_url: http://127.0.0.1:9\n",
  { instructions = 5000000, timeout_ms = 1000, memory_mb = 32 }))

local function run(name)
  return S.run(engine, { type = "track", event = name, context = { consent = { marketing = true } } })
end

local cases = {
  { "loop", "loop.lua:3: instruction budget exceeded" },
  { "pcall_loop", "pcall_loop.lua:2: instruction budget exceeded" },
  { "memory", "memory.lua:3: memory limit exceeded" },
  { "pattern_bomb", "pattern_bomb.lua:3: instruction budget exceeded" },
  { "pattern_pcall", "pattern_pcall.lua:2: instruction budget exceeded" },
  { "string_bomb", "string_bomb.lua:3: memory limit exceeded" },
  { "rep_bomb", "rep_bomb.lua:2:" },
  { "recursion", "recursion.lua:1: " },  -- stack overflow or memory cap, whichever comes first
  { "raise", "raise.lua:2: mapping gave up on purpose" },
  { "os_execute", "os_execute.lua:2: 'os.execute' is not available" },
  { "io_open", "io_open.lua:2: undefined global 'io'" },
  { "require", "require.lua:2: undefined global 'require'" },
  { "load", "load.lua:2: undefined global 'load'" },
  { "global_write", "global_write.lua:2: assignment to global 'leaked'" },
  { "string_dump", "string_dump.lua:2:" },
  { "library_write", "library_write.lua:2: library tables are read-only" },
  { "getmetatable_string", "getmetatable_string.lua:3:" },
  { "gc_loop", "gc_loop.lua:2: __gc metamethods are not allowed" },
}

describe("the sandbox", function()
  for _, c in ipairs(cases) do
    it("turns '" .. c[1] .. "' into an error naming file and line, then runs the next event", function()
      local out = run(c[1])
      assert.are.equal("error", out.outcome)
      assert.matches("tests/hostile/" .. c[2], out.reason, 1, true)
      local after = run("ok")
      assert.are.equal("deliver", after.outcome)
      -- string.upper still works and no global leaked from an earlier mapping
      assert.are.equal('{"leaked":true,"upper":"OK"}', after.requests[1].body)
    end)
  end

  it("did not let os.execute run", function()
    assert.is_nil(io.open("/tmp/blueprint-sandbox-escaped"))
  end)

  it("survives every attack in a row in one state", function()
    for round = 1, 2 do
      for _, c in ipairs(cases) do assert.are.equal("error", run(c[1]).outcome) end
    end
    assert.are.equal("deliver", run("ok").outcome)
  end)

  it("stops an endless loop by wall time too", function()
    local slow = assert(S.core.open_text("tests/hostile", "api_url: http://127.0.0.1:9\n",
      { instructions = 1000000000000, timeout_ms = 200 }))
    local out = S.run(slow, { type = "track", event = "loop", context = { consent = { marketing = true } } })
    assert.matches("time budget exceeded", out.reason, 1, true)
  end)
end)
