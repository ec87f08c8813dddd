-- Golden fixtures: tests/golden/<case>/ holds config.yaml, events.ndjson and
-- expected.ndjson (the exact dry-run output).  Add a case by adding a folder;
-- scripts/golden-update.sh CASE writes expected.ndjson for you to review.
local S = require("support")

local function cases()
  local p = io.popen("ls tests/golden")
  local t = {}
  for name in p:lines() do t[#t + 1] = name end
  p:close()
  return t
end

describe("golden dry-run fixtures #cli", function()
  for _, name in ipairs(cases()) do
    local dir = "tests/golden/" .. name
    it(name, function()
      local bpf = io.open(dir .. "/blueprint")
      local blueprint = bpf and bpf:read("l") or S.AC
      if bpf then bpf:close() end
      local out, err, code = S.sh(S.bin .. " dry-run " .. blueprint .. " --config " .. dir .. "/config.yaml " .. dir .. "/events.ndjson")
      assert.are.equal(0, code, err)
      local got = S.lines(out)
      local want = S.lines(io.open(dir .. "/expected.ndjson"):read("a"))
      for i = 1, math.max(#got, #want) do
        assert.are.equal(want[i], got[i], ("%s line %d differs"):format(name, i))
      end
    end)
  end
end)
