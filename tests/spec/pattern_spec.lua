-- The sandbox's pattern functions (src/pattern.c) count their matching steps
-- so a pathological pattern cannot hang a mapping.  They must behave exactly
-- as the string library does: compared here on thousands of generated
-- patterns and subjects, results and error messages alike.
local S = require("support")
local P = S.core.patterns()

local PIECES = {
  "a", "b", "c", " ", "-", ".", "%a", "%d", "%s", "%w", "%A", "%p", "%%", "%]", "%.", "%x", "%u", "%l",
  "[ab]", "[^a]", "[a-c]", "[%d_]", "[]]", "[^]a]", "[%a-]", "%b()", "%bab", "%f[%w]", "%f[%W]", "%1", "%0",
  "()", "(", ")", "$", "^", "[", "%", "%f", "%b", "%z", "%Z", "[%z]", "[^%z]", "%f[%z]", "%f[%Z]",
}
local QUANT = { "", "", "", "*", "+", "-", "?" }
local SUBJECT = { "a", "b", "c", " ", "(", ")", "1", "2", "_", "-", ".", "%", "]", "^", "$", "ab", "\0" }

local function pick(t) return t[math.random(#t)] end

local function pattern()
  local parts = {}
  if math.random(6) == 1 then parts[#parts + 1] = "^" end
  for _ = 1, math.random(0, 4) do
    local piece = pick(PIECES)
    if math.random(5) == 1 then piece = "(" .. piece .. pick(QUANT) .. ")" end
    parts[#parts + 1] = piece .. pick(QUANT)
  end
  if math.random(6) == 1 then parts[#parts + 1] = "$" end
  return table.concat(parts)
end

local function subject()
  local parts = {}
  for _ = 1, math.random(0, 10) do parts[#parts + 1] = pick(SUBJECT) end
  return table.concat(parts)
end

-- Every result (or the error message) as one comparable string.
local function outcome(f, ...)
  local r = table.pack(pcall(f, ...))
  local out = {}
  for i = 1, r.n do out[#out + 1] = tostring(r[i]) .. ":" .. type(r[i]) end
  return table.concat(out, "|")
end

local function all_matches(gmatch, s, p, init)
  local out, n = {}, 0
  for a, b, c in gmatch(s, p, init) do
    n = n + 1
    out[#out + 1] = tostring(a) .. "," .. tostring(b) .. "," .. tostring(c)
    if n > 50 then break end
  end
  return table.concat(out, ";")
end

local REPLACEMENTS = {
  "<%0>", "%1-%1", "%%", "x", "%", "%2", 7,
  { a = "A", ["()"] = false, b = 3 },
  function(a) if a == "a" then return nil end return "[" .. tostring(a) .. "]" end,
  function() return {} end,
}

describe("counted pattern functions", function()
  it("agree with the string library on generated patterns", function()
    math.randomseed(20261127)
    for case = 1, 4000 do
      local s, p, init = subject(), pattern(), math.random(-12, 12)
      local what = string.format("case %d: s=%q p=%q init=%d", case, s, p, init)
      assert.are.equal(outcome(string.find, s, p, init), outcome(P.find, s, p, init), what .. " find")
      assert.are.equal(outcome(string.find, s, p, init, true), outcome(P.find, s, p, init, true), what .. " plain find")
      assert.are.equal(outcome(string.match, s, p, init), outcome(P.match, s, p, init), what .. " match")
      assert.are.equal(outcome(all_matches, string.gmatch, s, p, init), outcome(all_matches, P.gmatch, s, p, init),
        what .. " gmatch")
      local repl = REPLACEMENTS[case % #REPLACEMENTS + 1]
      local max = case % 3 == 0 and math.random(0, 3) or nil
      assert.are.equal(outcome(string.gsub, s, p, repl, max), outcome(P.gsub, s, p, repl, max), what .. " gsub")
    end
  end)

  it("agree on the usual blueprint patterns", function()
    local cases = {
      { "https://acme.api-us1.com///", "/+$", "" },
      { "  Ada@Example.COM ", "^%s*(.-)%s*$", "%1" },
      { "Order Completed", "%s+", "_" },
      { "Crème brûlée", "[^%w]", "" },
      { "a.b.c", "%.", "/" },
      { "key=value; other=thing", "(%w+)=(%w+)", "%2=%1" },
      -- %z / %Z: the NUL byte (deprecated, still in Lua 5.4)
      { " ", "%Z", "<%0>" },
      { "ab", "%f[%Z]", "<%0>" },
      { "a\0b\0", "%z", "0" },
      { "z", "%z", "x" },
    }
    for _, c in ipairs(cases) do
      assert.are.same({ string.gsub(c[1], c[2], c[3]) }, { P.gsub(c[1], c[2], c[3]) })
      assert.are.same({ string.find(c[1], c[2]) }, { P.find(c[1], c[2]) })
      assert.are.same({ string.match(c[1], c[2]) }, { P.match(c[1], c[2]) })
    end
  end)

  it("stop a pathological pattern instead of hanging", function()
    local limited = S.core.patterns(5000000)
    local started = os.clock()
    local ok, err = pcall(limited.find, ("a"):rep(40), ("a*"):rep(8) .. "b")
    assert.is_false(ok)
    assert.matches("pattern budget exceeded", err)
    assert.is_true(os.clock() - started < 2, "took " .. (os.clock() - started) .. " s")
    -- plain search is linear (memmem), not a nested scan
    started = os.clock()
    assert.is_nil(P.find(("a"):rep(200000), ("a"):rep(100000) .. "b", 1, true))
    assert.is_true(os.clock() - started < 1, "plain find took " .. (os.clock() - started) .. " s")
  end)
end)
