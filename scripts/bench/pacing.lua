-- Summarise the emulator's request log for the pacing benchmark:
-- prints "OK LIMITED SECONDS": answers 200/201 and 429s after the first
-- second, and the span they cover.
--   lua5.4 scripts/bench/pacing.lua REQUESTS.json   (needs build/lua on LUA_CPATH)
local core = require("blueprint_core")
local reqs = assert(core.json_decode(io.open(arg[1]):read("a")))
local first, last, ok, limited
for _, r in ipairs(reqs) do first = first or r.at_ms; last = r.at_ms end
ok, limited = 0, 0
for _, r in ipairs(reqs) do
  if r.at_ms > first + 1000 then
    if r.status == 429 then limited = limited + 1 elseif r.status == 200 or r.status == 201 then ok = ok + 1 end
  end
end
print(ok, limited, ((last or 0) - (first or 0) - 1000) / 1000)
