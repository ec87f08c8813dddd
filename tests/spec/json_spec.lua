-- Exact JSON at the boundary: the vectors, through the same code the
-- engine uses (core.json_decode builds tables; json_encode writes them).
local S = require("support")
local core = S.core

local function rt(text) return core.json_encode(assert(core.json_decode(text))) end

describe("exact JSON", function()
  it("keeps 64-bit integers", function()
    assert.are.equal("1234567890123456789", rt("1234567890123456789"))
    assert.are.equal(math.maxinteger, core.json_decode("9223372036854775807"))
    assert.are.equal("integer", math.type(core.json_decode("1234567890123456789")))
  end)

  it("round-trips doubles", function()
    for _, v in ipairs({ "19.99", "0.1", "1.0", "-2.5", "1e-07", "3.141592653589793" }) do
      assert.are.equal(core.json_decode(v), core.json_decode(rt(v)))
    end
    assert.are.equal("19.99", rt("19.99"))
    assert.are.equal("0.1", rt("0.1"))
  end)

  it("keeps [] an array and {} an object", function()
    assert.are.equal('{"a":[],"b":{},"c":[{}],"d":{"e":[]}}', rt('{"a":[],"b":{},"c":[{}],"d":{"e":[]}}'))
  end)

  it("decodes escapes and surrogate pairs to UTF-8", function()
    assert.are.equal("é😀", core.json_decode('"\\u00e9\\ud83d\\ude00"'))
    assert.are.equal('"\\"\\\\\\n\\u0000"', rt('"\\"\\\\\\n\\u0000"'))
  end)

  it("keeps null as a value in arrays and objects", function()
    assert.are.equal('[null,1]', rt('[null,1]'))
    assert.are.equal('{"a":null}', rt('{"a":null}'))
  end)

  local malformed = { "", "{", "[1,]", "{'a':1}", "01", "1.", "NaN", '"\\ud83d"', '"\\x"', "[1 2]", '"\xff"', '"\xc0\xaf"', "1 2" }
  for _, m in ipairs(malformed) do
    it("rejects malformed input " .. string.format("%q", m), function()
      local v, err = core.json_decode(m)
      assert.is_nil(v)
      assert.matches("invalid JSON", err)
    end)
  end

  it("bounds depth and size", function()
    assert.is_nil(core.json_decode(string.rep("[", 100) .. string.rep("]", 100)))
    assert.is_truthy(core.json_decode(string.rep("[", 60) .. string.rep("]", 60)))
    local _, err = core.json_decode("[" .. string.rep("1,", 300000) .. "1]")
    assert.matches("too large", err)
  end)

  it("refuses to encode invalid UTF-8, NaN and functions", function()
    assert.is_nil(core.json_encode({ a = "\xff" }))
    assert.is_nil(core.json_encode({ a = 0 / 0 }))
    local _, err = core.json_encode({ a = { b = print } })
    assert.matches("a.b", err, 1, true)
  end)

  it("sorts object keys so output is deterministic", function()
    assert.are.equal('{"a":1,"b":2,"c":3}', core.json_encode({ c = 3, a = 1, b = 2 }))
    -- past the small-object path (32 keys) the order is the same
    local big, want = {}, {}
    for i = 1, 40 do big[string.format("k%02d", 41 - i)] = i end
    for i = 1, 40 do want[#want + 1] = string.format('"k%02d":%d', i, 41 - i) end
    assert.are.equal("{" .. table.concat(want, ",") .. "}", core.json_encode(big))
    assert.are.equal('{"":1,"a":2,"a\\u0000b":3,"ab":4}', core.json_encode({ ab = 4, [""] = 1, a = 2, ["a\0b"] = 3 }))
  end)

  it("names what it cannot encode", function()
    local cases = {
      { { 1, 2, x = 3 }, "mixes array items and named keys" },
      { { [5] = 1 }, "mixes array items and named keys" },
      { { a = { [true] = 1 } }, "a: table keys must be strings" },
      { { ["\xff"] = 1 }, "a key is not valid UTF-8" },
      { { a = { b = { c = 0 / 0 } } }, "a.b.c: NaN and infinity" },
      { setmetatable({ x = 1 }, getmetatable(core.array())), "a ctx.array() table has named keys" },
    }
    for _, case in ipairs(cases) do
      local out, err = core.json_encode(case[1])
      assert.is_nil(out)
      assert.matches(case[2], err, 1, true)
    end
    assert.are.equal("[]", core.json_encode(core.array()))
    assert.are.equal("{}", core.json_encode({}))
    assert.are.equal('[{"a":[1,{"b":true}]}]', core.json_encode({ { a = { 1, { b = true } } } }))
  end)
end)
