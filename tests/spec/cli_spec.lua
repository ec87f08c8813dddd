-- The dry-run command as an author uses it (docs/contracts.md, dry-run).  Tagged #cli so
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
    assert.are.equal(5, code)               -- some input was not an event
    local lines = S.lines(out)
    assert.are.equal(3, #lines)
    assert.matches('"outcome":"error","reason":"line 2: malformed event: invalid JSON', lines[2], 1, true)
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

-- The CLI as a blueprint author meets it.
describe("the CLI names lines and stays quiet #cli", function()
  local function sh(cmd, stdin) return S.sh(cmd, stdin) end
  local function copy_blueprint(name)
    local dir = S.tmpdir()
    os.execute("cp -r blueprints/" .. name .. " " .. dir .. "/")
    return dir .. "/" .. name
  end

  it("names the input line of each malformed event, not an index and a byte, and exits 5", function()
    local input = "[" .. ID:format("a1") .. ",\n\n " .. ID:format("a2") .. " " .. ID:format("a3") .. ",\n{bad}\n"
    local out, err, code = dry(AC .. " --config " .. CONFIG, input)
    assert.are.equal(5, code, err)
    local lines = S.lines(out)
    assert.are.equal(5, #lines)
    assert.matches('"reason":"line 3: malformed input: expected \',\' between array elements', lines[3], 1, true)
    assert.matches('"reason":"line 4: malformed event: invalid JSON', lines[4], 1, true)
    assert.matches('"reason":"line 5: malformed input: the JSON array is not closed', lines[5], 1, true)
    assert.matches("blueprint: 3 of 5 events in stdin malformed", err, 1, true)
    -- the examples are all events: exit 0
    local _, err2, code2 = dry(AC .. " --config " .. CONFIG .. " " .. EVENTS)
    assert.are.equal(0, code2, err2)
    local _, err3, code3 = dry(AC .. " --config " .. CONFIG .. " " .. S.AC .. "/examples/malformed-line.ndjson")
    assert.are.equal(5, code3)
    assert.matches("1 of 2 events", err3, 1, true)
  end)

  it("blueprint test: a diff names the event's messageId; log lines only for a failing case or --verbose", function()
    local bp = copy_blueprint("webhook")
    local lua = io.open(bp .. "/event.lua"):read("a")
    S.write(bp .. "/event.lua", (lua:gsub("return function%(event, ctx%)", "%0 print(\"mapping says hi\")", 1)))
    local _, _, code = sh(S.bin .. " test " .. bp .. " --update")
    assert.are.equal(0, code)
    local out, err
    out, err, code = sh(S.bin .. " test " .. bp)
    assert.are.equal(0, code, out .. err)
    assert.are.equal("", err)                                   -- every case passed: quiet
    out, err = sh(S.bin .. " test " .. bp .. " --verbose")
    assert.matches("blueprint log [event 0 w-01] event.lua:2: mapping says hi", err, 1, true)
    local exp = bp .. "/tests/all-types/expected.ndjson"
    S.write(exp, (io.open(exp):read("a"):gsub('Ada Lovelace', 'Ada L', 1)))
    out, err, code = sh(S.bin .. " test " .. bp)
    assert.are.equal(4, code)
    assert.matches("  event 0 (w-01):\n", out, 1, true)
    assert.matches("mapping says hi", err, 1, true)              -- the failing case's logs
  end)

  it("suggests the key an unknown blueprint.yaml key is a typo of", function()
    local bp = copy_blueprint("webhook")
    local y = io.open(bp .. "/blueprint.yaml"):read("a")
    S.write(bp .. "/blueprint.yaml", (y:gsub("\nevents:", "\nevnets:", 1)))
    local _, err, code = sh(S.bin .. " test " .. bp)
    assert.are.equal(2, code)
    assert.matches("unknown key 'evnets' at the top level %(known keys: .*%); did you mean 'events'%?", err)
  end)

  it("reports a YAML line without ':' (an indentation slip) on that line, not the next", function()
    local cfg = os.tmpname()
    finally(function() os.remove(cfg) end)
    S.write(cfg, "api_url: https://acme.api-us1.com\nconsent\n  default_policy: deny\n")
    local _, err, code = dry(AC .. " --config " .. cfg, "")
    assert.are.equal(2, code)
    assert.matches(cfg .. ":2:1: invalid YAML: could not find expected ':'", err, 1, true)
  end)

  it("says it reads the terminal when dry-run has no events file and stdin is a TTY", function()
    local out = sh("script -qec '" .. S.bin .. " dry-run " .. AC .. " --config " .. CONFIG .. "' /dev/null < /dev/null")
    assert.matches("reading events from the terminal", out, 1, true)
    local _, err = dry(AC .. " --config " .. CONFIG, "")                -- a pipe: no hint
    assert.is_nil(err:find("reading events", 1, true))
  end)

  it("--help gives an overview of every command, not dry-run's text", function()
    local out, _, code = sh(S.bin .. " --help")
    assert.are.equal(0, code)
    assert.matches("^usage: blueprint COMMAND", out)
    for _, cmd in ipairs({ "dry%-run", "test", "deliver", "dlq", "serve", "token", "rotate%-key" }) do
      assert.matches("\n  " .. cmd .. " ", out)
    end
    assert.is_nil(out:find("Maps each event", 1, true))
  end)

  it("the webhook blueprint has examples/ that dry-run cleanly", function()
    local out, err, code = dry("blueprints/webhook --config blueprints/webhook/examples/config.yaml "
      .. "blueprints/webhook/examples/events.ndjson")
    assert.are.equal(0, code, err)
    assert.matches('"outcome":"deliver"', out, 1, true)
  end)
end)

-- A test that errors before its stop() leaks nothing.
describe("the test harness stops what a spec started #cli", function()
  local sh = S.sh
  it("stops, by the end of its file, an emulator whose test failed before stop(), and the file's own", function()
    local dir = S.tmpdir()
    local probe = dir .. "/probe_spec.lua"
    -- account counts no other run of this spec uses at the same time (make
    -- test runs the #cli specs in two builds at once): the emulators are
    -- found by them in `ps`
    local seed = 0
    for c in dir:gmatch(".") do seed = (seed * 31 + c:byte()) % 1000 end
    local file_n, test_n = 1000 + 2 * seed, 1001 + 2 * seed
    S.write(probe, table.concat({
      'local S = require("support")',
      'describe("probe", function()',
      '  setup(function() S.start_emulator("--rate-limit 0 --accounts ' .. file_n .. '") end)',
      '  it("fails before stop", function()',
      '    local emu = S.start_emulator("--rate-limit 0 --accounts ' .. test_n .. '")',
      '    error("boom")',
      '    emu.stop()',
      '  end)',
      'end)',
    }, "\n"))
    local out = sh("lua5.4 /usr/bin/busted --cpath='build/lua/?.so' --lpath='tests/spec/?.lua' " .. probe)
    assert.matches("boom", out, 1, true)                          -- the probe ran and failed
    local ps = sh("ps -eo args")
    assert.is_nil(ps:find("--accounts " .. file_n .. "\n", 1, true), "the file's emulator outlived its file")
    assert.is_nil(ps:find("--accounts " .. test_n .. "\n", 1, true), "the failed test's emulator outlived it")
  end)
end)

-- `make run`'s printed commands work pasted into bash as printed (the install
-- command sets ID; the example events are all accepted).  Not #serve: run.sh runs build/blueprint
-- whichever build the suite tests, so once is enough.
describe("make run's quickstart #quickstart", function()
  it("prints commands that install, capture the id, send the examples and say duplicates when resent", function()
    local state = S.tmpdir()
    local out, pidf = state .. "/run.out", os.tmpname()
    os.execute("PORT=0 EMU_PORT=0 STATE=" .. state .. " scripts/run.sh > " .. out .. " 2>&1 & echo $! > " .. pidf)
    local pid = io.open(pidf):read("l")
    os.remove(pidf)
    finally(function()
      os.execute("kill -TERM " .. pid .. " 2>/dev/null")   -- run.sh's trap stops serve and the emulator
      S.eventually(function() return not os.execute("kill -0 " .. pid .. " 2>/dev/null") end, 10)
    end)
    local function printed()
      local f = io.open(out)          -- not there until the shell has opened it
      local t = f and f:read("a") or ""
      if f then f:close() end
      return t
    end
    local text = S.eventually(function() local t = printed(); return t:find("\nPorts: ", 1, true) and t end, 20)
    assert.is_truthy(text, "run.sh printed no quickstart: " .. printed())
    -- the install form's values, one per line
    assert.matches("\n  API Key%s+emulator%-api%-token\n", text)
    assert.matches("\n  Event Tracking endpoint%s+http://127%.0%.0%.1:%d+/event\n", text)
    -- the commands exactly as printed: each indented block under "export TOKEN", "1." and "2."
    local script, keep = {}, false
    for line in text:gmatch("[^\n]*") do
      if line:match("^  export TOKEN=") then script[#script + 1] = line end
      if line:match("^1%. Install") or line:match("^2%. Send") then keep = true
      elseif line:match("^%d%. ") or line == "" then keep = false
      elseif keep and line:match("^  ") and not line:match("^   or ") then script[#script + 1] = line end
    end
    local cmds = state .. "/pasted.sh"
    S.write(cmds, table.concat(script, "\n") .. "\n"
      .. script[#script - 1] .. "\n" .. script[#script] .. "\n")   -- the examples, sent again
    local res, err, code = S.sh("bash -e " .. cmds)
    assert.are.equal(0, code, res .. err)
    assert.matches("ID=int_%x+", res)
    assert.matches('{"accepted":1,"duplicates":0,"errors":[]}', res, 1, true)     -- the test event
    assert.matches('{"accepted":8,"duplicates":0,"errors":[]}', res, 1, true)     -- every example
    assert.matches('{"accepted":0,"duplicates":8,"errors":[]}', res, 1, true)     -- sent again
  end)
end)
