-- Golden fixtures: each blueprint keeps its own under BLUEPRINT/tests/<case>/
-- (config.yaml, events.ndjson, expected.ndjson: the exact dry-run output),
-- and `blueprint test BLUEPRINT` runs them.  Add a case by adding a folder;
-- `blueprint test BLUEPRINT --update` writes expected.ndjson for you to review.
local S = require("support")
local core = S.core

local function blueprints_with_tests()
  local p = io.popen("ls -d blueprints/*/tests 2>/dev/null")
  local t = {}
  for path in p:lines() do t[#t + 1] = path:match("^(.*)/tests$") end
  p:close()
  return t
end

local function cases(dir)
  local p = io.popen("ls " .. dir .. "/tests")
  local t = {}
  for name in p:lines() do t[#t + 1] = name end
  p:close()
  return t
end

describe("golden dry-run fixtures #cli", function()
  for _, bp in ipairs(blueprints_with_tests()) do
    it(bp .. ": blueprint test", function()
      local out, err, code = S.sh(S.bin .. " test " .. bp)
      assert.are.equal(0, code, out .. err)
      assert.matches("%d+ passed, 0 failed", out)
    end)

    -- --decode adds, next to each exact body, what is inside it
    for _, name in ipairs(cases(bp)) do
      it(bp .. ": --decode on " .. name, function()
        local dir = bp .. "/tests/" .. name
        -- a case's own answers to steps, as `blueprint test` uses them
        local answers = io.open(dir .. "/answers.yaml") and (" --answers " .. dir .. "/answers.yaml") or ""
        -- and its dry-run.args (--batch: a line per batch)
        local args = io.open(dir .. "/dry-run.args") and (" " .. io.open(dir .. "/dry-run.args"):read("l")) or ""
        local out, err, code = S.sh(S.bin .. " dry-run " .. bp .. " --decode --config " .. dir .. "/config.yaml "
          .. dir .. "/events.ndjson" .. answers .. args)
        local plain = S.lines(io.open(dir .. "/expected.ndjson"):read("a"))
        -- a case with input lines that are not events (all-rows) exits 5, naming them
        local malformed = table.concat(plain, "\n"):find('"reason":"line %d+: malformed') and 5 or 0
        assert.are.equal(malformed, code, err)
        for i, line in ipairs(S.lines(out)) do
          local o = assert(core.json_decode(line))
          local want = assert(core.json_decode(plain[i]))
          assert.are.equal(#want.requests, #o.requests)
          for k, r in ipairs(o.requests) do
            assert.are.equal(want.requests[k].body, r.body, "the exact body stays the contract")
            if r.body ~= core.null then
              if r.headers["Content-Type"]:match("form") then
                local form = S.form(r.body)
                for key, v in pairs(form) do
                  local inner = v:match("^[%[{]") and core.json_decode(v)
                  if inner then assert.are.same(inner, r.decoded[key], key)
                  else assert.are.equal(v, r.decoded[key], key) end
                end
              else
                assert.are.same(core.json_decode(r.body), r.decoded)
              end
            end
          end
        end
      end)
    end
  end
end)
