-- The dry-run command as an author uses it (DESIGN.md §5).  Tagged #cli so
-- the test run repeats it against the ASan/UBSan build.
local S = require("support")

local AC = S.AC
local CONFIG = "blueprints/activecampaign/examples/config.yaml"
local EVENTS = "blueprints/activecampaign/examples/events.ndjson"

local function dry(args, stdin) return S.sh(S.bin .. " dry-run " .. args, stdin) end

local ID = '{"type":"identify","messageId":"%s","traits":{"email":"a@b.co"},"context":{"consent":{"marketing":true}}}'

describe("blueprint dry-run #cli", function()
  it("prints one line per event, in order, and exits 0", function()
    local out, err, code = dry(AC .. " --config " .. CONFIG .. " " .. EVENTS)
    assert.are.equal(0, code, err)
    local lines = S.lines(out)
    local n = #S.lines(io.open(EVENTS):read("a"))
    assert.are.equal(n, #lines)
    for i, l in ipairs(lines) do
      local o = assert(S.core.json_decode(l))
      assert.are.equal(i - 1, o.index)
      assert.is_truthy(({ deliver = 1, drop = 1, error = 1 })[o.outcome])
    end
  end)

  it("reads stdin by default and with -", function()
    local input = ID:format("s1") .. "\n" .. ID:format("s2") .. "\n"
    for _, arg in ipairs({ "", " -" }) do
      local out, _, code = dry(AC .. " --config " .. CONFIG .. arg, input)
      assert.are.equal(0, code)
      local lines = S.lines(out)
      assert.are.equal(2, #lines)
      assert.matches('"message_id":"s2"', lines[2], 1, true)
    end
  end)

  it("reads a JSON array", function()
    local out, _, code = dry(AC .. " --config " .. CONFIG, "[" .. ID:format("a1") .. ",\n " .. ID:format("a2") .. "]")
    assert.are.equal(0, code)
    assert.are.equal(2, #S.lines(out))
  end)

  it("reads one pretty-printed object", function()
    local pretty = '{\n  "type": "identify",\n  "messageId": "pp",\n  "traits": {\n    "email": "a@b.co"\n  },\n'
      .. '  "context": {"consent": {"marketing": true}}\n}\n'
    local out, _, code = dry(AC .. " --config " .. CONFIG, pretty)
    assert.are.equal(0, code)
    local lines = S.lines(out)
    assert.are.equal(1, #lines)
    assert.matches('"outcome":"deliver"', lines[1], 1, true)
  end)

  it("turns a malformed line into an error outcome and carries on", function()
    local input = ID:format("g1") .. "\n{not json\n" .. ID:format("g2") .. "\n"
    local out, _, code = dry(AC .. " --config " .. CONFIG, input)
    assert.are.equal(0, code)
    local lines = S.lines(out)
    assert.are.equal(3, #lines)
    assert.matches('"outcome":"error"', lines[2], 1, true)
    assert.matches('"message_id":"g2"', lines[3], 1, true)
  end)

  it("exits 2 naming the field for an invalid config", function()
    local cfg = os.tmpname()
    S.write(cfg, "api_url: http://acme.api-us1.com\napi_key: " .. S.API_KEY .. "\n")
    local out, err, code = dry(AC .. " --config " .. cfg, "")
    os.remove(cfg)
    assert.are.equal(2, code)
    assert.are.equal("", out)
    assert.matches(cfg .. ":1: config field 'api_url'", err, 1, true)
    assert.is_nil(err:find(S.API_KEY, 1, true))
  end)

  it("exits 2 for a broken blueprint", function()
    local _, err, code = dry("tests --config " .. CONFIG, "")
    assert.are.equal(2, code)
    assert.matches("tests/blueprint.yaml", err, 1, true)
  end)

  it("exits 1 for usage errors", function()
    for _, args in ipairs({ "", AC, AC .. " --config", AC .. " --config " .. CONFIG .. " --bogus",
                            AC .. " --config " .. CONFIG .. " /nonexistent/events.ndjson",
                            AC .. " --config " .. CONFIG .. " --memory-mb x" }) do
      local _, err, code = dry(args, "")
      assert.are.equal(1, code, "args: " .. args)
      assert.matches("blueprint", err)
    end
  end)

  it("keeps secrets out of stdout and stderr", function()
    local cfg = os.tmpname()
    S.write(cfg, S.base_config)
    local input = ID:format("x") .. '\n{"type":"page","context":{"traits":{"email":"a@b.co"},"consent":{"marketing":true}}}\n'
    local out, err, code = dry(AC .. " --config " .. cfg, input)
    os.remove(cfg)
    assert.are.equal(0, code)
    for _, secret in ipairs({ S.API_KEY, S.TRACK_KEY }) do
      assert.is_nil(out:find(secret, 1, true))
      assert.is_nil(err:find(secret, 1, true))
    end
    assert.matches("[redacted]", out, 1, true)
  end)

  it("enforces --max-event-bytes", function()
    local out = dry(AC .. " --config " .. CONFIG .. " --max-event-bytes 50", ID:format("big") .. "\n")
    assert.matches("larger than the 50-byte limit", out, 1, true)
  end)
end)

describe("blueprint dry-run with hostile mappings #cli", function()
  it("judges every event of a hostile blueprint and exits 0", function()
    local names = { "loop", "memory", "string_bomb", "rep_bomb", "recursion", "raise", "os_execute", "io_open",
                    "require", "load", "global_write", "pcall_loop", "string_dump", "library_write", "gc_loop", "ok" }
    local input = {}
    for _, n in ipairs(names) do
      input[#input + 1] = '{"type":"track","event":"' .. n .. '","context":{"consent":{"marketing":true}}}'
    end
    local cfg = os.tmpname()
    S.write(cfg, "api_url: http://127.0.0.1:9\n")
    local out, err, code = S.sh(S.bin .. " dry-run tests/hostile --config " .. cfg .. " --instructions 2000000 --memory-mb 32",
                                table.concat(input, "\n") .. "\n")
    os.remove(cfg)
    assert.are.equal(0, code, err)
    local lines = S.lines(out)
    assert.are.equal(#names, #lines)
    for i = 1, #names - 1 do
      assert.matches('"outcome":"error","reason":"tests/hostile/' .. names[i] .. '.lua:', lines[i], 1, true)
    end
    assert.matches('"outcome":"deliver"', lines[#names], 1, true)
  end)
end)

describe("the JWT secret #cli", function()
  -- an HMAC key shorter than its 32-byte output is guessable; before, any
  -- non-empty BLUEPRINT_JWT_SECRET was taken
  it("is refused below 32 bytes by token and serve, saying how to make one", function()
    local state = S.tmpdir()
    for _, cmd in ipairs({ " token --role admin --state " .. state, " serve --port 0 --state " .. state }) do
      local out, err, code = S.sh("BLUEPRINT_JWT_SECRET=too-short-a-secret " .. S.bin .. cmd)
      assert.are_not.equal(0, code, cmd)
      assert.are.equal("", out)
      assert.matches("BLUEPRINT_JWT_SECRET is 18 bytes; a JWT secret is 32 to 198 bytes (make one with: openssl rand "
        .. "-hex 32)", err, 1, true)
      assert.is_nil(err:find("too-short-a-secret", 1, true))   -- the value itself is never shown
    end
    local out, err, code = S.sh("BLUEPRINT_JWT_SECRET=" .. ("k"):rep(32) .. " " .. S.bin .. " token --role admin --state "
      .. state)
    assert.are.equal(0, code, err)
    assert.matches("^ey", out)
  end)
end)
