-- Compare two outcome files line by line, so benchmark comparisons are
-- honest: same decisions, same requests.  Bodies are compared by meaning
-- (JSON parsed with the core's exact decoder, form fields decoded, the JSON
-- inside eventdata/visit parsed).  "equivalent" tolerates what lossy JSON
-- libraries do (numbers equal to 14 significant digits, [] equal to {});
-- "exact" does not, and counts the events a lossy implementation changed.
--   lua5.4 scripts/bench/compare.lua REFERENCE OTHER   (needs build/lua on LUA_CPATH)
-- Prints {"events":N,"equivalent":N,"exact":N} and exits 1 unless every line
-- is equivalent; on stderr, one short line per differing event (at most
-- five): the event, then the first field that differs, e.g.
--   line 7 (msg-00000007, track "Product Viewed"): requests[2].body.eventdata.category: "Shoes" vs (absent)
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

local function key_path(path, k)
  if math.type(k) == "integer" then return path .. "[" .. k .. "]" end
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then
    return path == "" and k or path .. "." .. k
  end
  return path .. "[" .. string.format("%q", tostring(k)) .. "]"
end

-- nil when a and b are the same; else the path of the first difference
-- and the two values found there
local function differ(a, b, exact, path)
  if type(a) == "number" and type(b) == "number" then
    if exact then
      if math.type(a) == math.type(b) and a == b then return nil end
      return path, a, b
    end
    -- equal to the 14 significant digits lua-cjson keeps
    local x, y = a + 0.0, b + 0.0
    if x == y or math.abs(x - y) <= 1e-13 * math.max(math.abs(x), math.abs(y)) then return nil end
    return path, a, b
  end
  if type(a) ~= type(b) then return path, a, b end
  if type(a) ~= "table" then
    if a == b then return nil end
    return path, a, b
  end
  if is_empty_container(a) and is_empty_container(b) then
    if not exact or getmetatable(a) == getmetatable(b) then return nil end
    return path, a, b
  end
  local keys = {}
  for k in pairs(a) do keys[#keys + 1] = k end
  for k in pairs(b) do if a[k] == nil then keys[#keys + 1] = k end end
  table.sort(keys, function(x, y)
    if type(x) == type(y) then return x < y end
    return type(x) == "number"
  end)
  for _, k in ipairs(keys) do
    local p, x, y = differ(a[k], b[k], exact, key_path(path, k))
    if p then return p, x, y end
  end
  return nil
end

local function view(rec)
  local reqs = {}
  for i, r in ipairs(rec.requests or {}) do
    reqs[i] = { method = r.method, url = r.url, body = decode_body(r) }
  end
  return { outcome = rec.outcome, requests = reqs }
end

local function show(v)
  if v == nil then return "(absent)" end
  local s
  if type(v) == "table" then
    s = core.json_encode(v) or "(table)"
  elseif type(v) == "string" then
    s = string.format("%q", v)
  else
    s = tostring(v)
  end
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

local function describe(n, rec)
  if not rec then return ("line %d"):format(n) end
  local what = rec.type or "?"
  if rec.type == "track" and rec.event then what = ("track %q"):format(rec.event) end
  return ("line %d (%s, %s)"):format(n, rec.message_id or "no messageId", what)
end

local fa, fb = assert(io.open(arg[1])), assert(io.open(arg[2]))
local n, equivalent, exact, differing = 0, 0, 0, 0
local MAX_SHOWN = 5
while true do
  local la, lb = fa:read("l"), fb:read("l")
  if not la and not lb then break end
  n = n + 1
  local ra, rb = la and core.json_decode(la), lb and core.json_decode(lb)
  local va, vb = ra and view(ra), rb and view(rb)
  local where
  if not va or not vb then
    where = not la and "the reference has no line here" or not lb and "the other file has no line here"
      or "not a JSON outcome line"
  else
    local p, x, y = differ(va, vb, false, "")
    if p then
      where = ("%s: %s vs %s"):format(p == "" and "(whole outcome)" or p, show(x), show(y))
    end
  end
  if not where then
    equivalent = equivalent + 1
    if not differ(va, vb, true, "") then exact = exact + 1 end
  else
    differing = differing + 1
    if differing <= MAX_SHOWN then
      io.stderr:write(("%s: %s\n"):format(describe(n, ra or rb), where))
    end
  end
end
if differing > MAX_SHOWN then
  io.stderr:write(("... and %d more lines differ\n"):format(differing - MAX_SHOWN))
end
print(('{"events":%d,"equivalent":%d,"exact":%d}'):format(n, equivalent, exact))
os.exit(equivalent == n and 0 or 1)
