-- The benchmark compares our mapping with the same mapping in plain
-- Lua+cjson and in Node; the comparison is only honest if all three decide
-- the same and send the same requests.  Checked here on a small corpus
-- (make bench checks a 5000-event sample of the big one).
--
-- All three implement the frozen copy of the ActiveCampaign blueprint kept
-- with the benchmark, scripts/bench/blueprint/, never blueprints/activecampaign:
-- a change to the live blueprint cannot fail these tests.  Refreshing the copy
-- is described in scripts/bench/README.md.
local S = require("support")

local dir = S.tmpdir()
local corpus = dir .. "/corpus.ndjson"
local CFG = "scripts/bench/config.json"
local FROZEN = "scripts/bench/blueprint"

-- commands here redirect their own output
local function run(cmd) assert.is_true(os.execute(cmd) == true, cmd) end

local function compare(a, b)
  local out, err, code = S.sh("LUA_CPATH='build/lua/?.so;;' lua5.4 scripts/bench/compare.lua " .. a .. " " .. b)
  local r = assert(S.core.json_decode(out), out .. err)
  return r, code, err
end

-- a short failure: how many events differ, then compare.lua's one line per
-- event (which event, which field, both values)
local function expect_equivalent(who, file)
  local r, code, err = compare(dir .. "/ours", file)
  assert(code == 0 and r.equivalent == r.events,
    ("%s and the frozen mapping %s/ differ on %d of %d events (the frozen copy's value first):\n%s"
      .. "(they must implement the same version of the mapping; blueprints/activecampaign is not involved;"
      .. " see scripts/bench/README.md)"):format(who, FROZEN, r.events - r.equivalent, r.events, err))
  return r
end

describe("benchmark equivalence", function()
  setup(function()
    run("lua5.4 scripts/bench/corpus.lua 1500 3 > " .. corpus)
    run(S.bin .. " dry-run " .. FROZEN .. " --config " .. CFG .. " " .. corpus .. " > " .. dir .. "/ours")
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

  it("exercises every mapping of the frozen copy, so the comparison is not vacuous", function()
    local mapped = {}
    for line in io.lines(dir .. "/ours") do
      local file = line:match('"reason":"mapped by ([%w_]+%.lua)"')
      if file then mapped[file] = (mapped[file] or 0) + 1 end
    end
    for _, file in ipairs({ "identify.lua", "page.lua", "product_viewed.lua", "order_completed.lua", "custom.lua" }) do
      assert.is_true(io.open(FROZEN .. "/" .. file) ~= nil, FROZEN .. "/" .. file .. " is missing")
      assert.is_true((mapped[file] or 0) > 20, file .. " delivered only " .. (mapped[file] or 0) .. " events")
    end
  end)

  it("Lua+cjson decides and sends the same, except what lua-cjson loses", function()
    run("lua5.4 scripts/bench/ac_cjson.lua " .. CFG .. " < " .. corpus .. " > " .. dir .. "/lua")
    local r = expect_equivalent("scripts/bench/ac_cjson.lua", dir .. "/lua")
    assert.are.equal(1500, r.equivalent)
    assert.is_true(r.exact < r.equivalent, "the strict comparison must see lua-cjson's lost digits")
  end)

  it("Node decides and sends the same, except what JSON.parse loses", function()
    run("node scripts/bench/ac_node.js " .. CFG .. " < " .. corpus .. " > " .. dir .. "/node")
    local r = expect_equivalent("scripts/bench/ac_node.js", dir .. "/node")
    assert.are.equal(1500, r.equivalent)
    assert.is_true(r.exact < r.equivalent)
  end)

  it("the comparator catches a different decision, and names the event and the field", function()
    local bad = dir .. "/bad"
    local f = io.open(bad, "w")
    for line in io.lines(dir .. "/ours") do
      f:write((line:gsub('"outcome":"deliver"', '"outcome":"drop"', 1)), "\n")
    end
    f:close()
    local r, code, err = compare(dir .. "/ours", bad)
    assert.are.equal(1, code)
    assert.is_true(r.equivalent < 1500)
    local first = err:match("^[^\n]*")
    assert.matches('^line %d+ %(msg%-%d+, [%w "]+%): outcome: "deliver" vs "drop"$', first)
    local lines = 0
    for l in err:gmatch("[^\n]+") do
      lines = lines + 1
      assert.is_true(#l < 200, "a long report line: " .. l)
    end
    assert.are.equal(6, lines)   -- five events, then "... and N more lines differ"
    assert.matches("%.%.%. and %d+ more lines differ", err)
  end)

  it("the comparator names the differing field inside eventdata", function()
    local bad = dir .. "/bad-field"
    local f = io.open(bad, "w")
    local changed = false
    for line in io.lines(dir .. "/ours") do
      if not changed and line:find('"event":"Product Viewed"', 1, true) and line:find("%22currency%22%3A%22", 1, true) then
        line = line:gsub("%%22currency%%22%%3A%%22", "%%22currency%%22%%3A%%22X", 1)
        changed = true
      end
      f:write(line, "\n")
    end
    f:close()
    assert.is_true(changed)
    local r, code, err = compare(dir .. "/ours", bad)
    assert.are.equal(1, code)
    assert.are.equal(1499, r.equivalent)
    assert.matches('track "Product Viewed"%): requests%[2%]%.body%.eventdata%.currency: "(%u+)" vs "X%1"\n$', err)
  end)
end)
