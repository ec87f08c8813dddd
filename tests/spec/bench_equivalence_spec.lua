-- The benchmark compares our mapping with the same mapping in plain
-- Lua+cjson and in Node; the comparison is only honest if all three decide
-- the same and send the same requests.  Checked here on a small corpus
-- (make bench checks a 5000-event sample of the big one).
local S = require("support")

local dir = S.tmpdir()
local corpus = dir .. "/corpus.ndjson"
local CFG = "scripts/bench/config.json"

-- commands here redirect their own output
local function run(cmd) assert.is_true(os.execute(cmd) == true, cmd) end

local function compare(a, b)
  local out, err, code = S.sh("LUA_CPATH='build/lua/?.so;;' lua5.4 scripts/bench/compare.lua " .. a .. " " .. b)
  local r = assert(S.core.json_decode(out), out .. err)
  return r, code, err
end

describe("benchmark equivalence", function()
  setup(function()
    run("lua5.4 scripts/bench/corpus.lua 1500 3 > " .. corpus)
    run(S.bin .. " dry-run " .. S.AC .. " --config " .. CFG .. " " .. corpus .. " > " .. dir .. "/ours")
  end)

  it("generates the documented mix deterministically", function()
    local again = dir .. "/again.ndjson"
    run("lua5.4 scripts/bench/corpus.lua 1500 3 > " .. again)
    assert.are.equal(io.open(corpus):read("a"), io.open(again):read("a"))
    local counts = {}
    for line in io.lines(corpus) do
      local ev = S.core.json_decode(line)
      local k = ev.type == "track" and ev.event or ev.type
      counts[k] = (counts[k] or 0) + 1
    end
    assert.is_true(counts.page > 500 and counts.page < 700)                 -- ~40%
    assert.is_true(counts["Order Completed"] > 100 and counts["Order Completed"] < 200)  -- ~10%
    assert.is_true(counts.identify > 170 and counts.identify < 280)         -- ~15%
  end)

  it("Lua+cjson decides and sends the same, except what lua-cjson loses", function()
    run("lua5.4 scripts/bench/ac_cjson.lua " .. CFG .. " < " .. corpus .. " > " .. dir .. "/lua")
    local r, code, err = compare(dir .. "/ours", dir .. "/lua")
    assert.are.equal(0, code, err)
    assert.are.equal(1500, r.equivalent)
    assert.is_true(r.exact < r.equivalent, "the strict comparison must see lua-cjson's lost digits")
  end)

  it("Node decides and sends the same, except what JSON.parse loses", function()
    run("node scripts/bench/ac_node.js " .. CFG .. " < " .. corpus .. " > " .. dir .. "/node")
    local r, code, err = compare(dir .. "/ours", dir .. "/node")
    assert.are.equal(0, code, err)
    assert.are.equal(1500, r.equivalent)
    assert.is_true(r.exact < r.equivalent)
  end)

  it("the comparator catches a different decision", function()
    local bad = dir .. "/bad"
    local f = io.open(bad, "w")
    for line in io.lines(dir .. "/ours") do
      f:write((line:gsub('"outcome":"deliver"', '"outcome":"drop"', 1)), "\n")
    end
    f:close()
    local r = compare(dir .. "/ours", bad)
    assert.is_true(r.equivalent < 1500)
  end)
end)
