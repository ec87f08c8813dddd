-- Compare two outcome files line by line, so benchmark comparisons are
-- honest: same decisions, same requests.  Bodies are compared by meaning
-- (JSON parsed with the core's exact decoder, form fields decoded, the JSON
-- inside eventdata/visit parsed).  "equivalent" tolerates what lossy JSON
-- libraries do (numbers equal to 14 significant digits, [] equal to {});
-- "exact" does not, and counts the events a lossy implementation changed.
--   lua5.4 scripts/bench/compare.lua REFERENCE OTHER   (needs build/lua on LUA_CPATH)
local core = require("blueprint_core")

local function unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function decode_body(r)
  local ct = r.headers and r.headers["Content-Type"] or ""
  if type(r.body) ~= "string" then return r.body end
  if ct:find("x-www-form-urlencoded", 1, true) then
    local t = {}
    for pair in r.body:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=(.*)$")
      k, v = unescape(k), unescape(v)
      if k == "eventdata" or k == "visit" then v = core.json_decode(v) or v end
      t[k] = v
    end
    return t
  end
  return core.json_decode(r.body) or r.body
end

local function is_empty_container(v)
  return type(v) == "table" and next(v) == nil
end

local function same(a, b, exact)
  if type(a) == "number" and type(b) == "number" then
    if exact then return math.type(a) == math.type(b) and a == b end
    -- equal to the 14 significant digits lua-cjson keeps
    local x, y = a + 0.0, b + 0.0
    return x == y or math.abs(x - y) <= 1e-13 * math.max(math.abs(x), math.abs(y))
  end
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  if is_empty_container(a) and is_empty_container(b) then
    return not exact or getmetatable(a) == getmetatable(b)
  end
  for k, v in pairs(a) do if not same(v, b[k], exact) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function view(rec)
  local reqs = {}
  for i, r in ipairs(rec.requests or {}) do
    reqs[i] = { method = r.method, url = r.url, body = decode_body(r) }
  end
  return { outcome = rec.outcome, requests = reqs }
end

local fa, fb = assert(io.open(arg[1])), assert(io.open(arg[2]))
local n, equivalent, exact, shown = 0, 0, 0, 0
while true do
  local la, lb = fa:read("l"), fb:read("l")
  if not la and not lb then break end
  n = n + 1
  local ra, rb = la and core.json_decode(la), lb and core.json_decode(lb)
  local va, vb = ra and view(ra), rb and view(rb)
  if va and vb and same(va, vb, false) then
    equivalent = equivalent + 1
    if same(va, vb, true) then exact = exact + 1 end
  elseif shown < 3 then
    shown = shown + 1
    io.stderr:write(("line %d differs:\n  %s\n  %s\n"):format(n, la or "(missing)", lb or "(missing)"))
  end
end
print(('{"events":%d,"equivalent":%d,"exact":%d}'):format(n, equivalent, exact))
os.exit(equivalent == n and 0 or 1)
