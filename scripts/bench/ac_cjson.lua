-- The ActiveCampaign default mapping as a Lua user would write it without
-- our core: plain lua5.4 + lua-cjson, one event per line in, one outcome
-- line per event out.  Used by `make bench` as a point of comparison.
-- Implements the frozen copy scripts/bench/blueprint/, not the live
-- blueprints/activecampaign/; change the three together (scripts/bench/README.md).
--   lua5.4 scripts/bench/ac_cjson.lua CONFIG.json < events.ndjson > outcomes.ndjson
local cjson = require("cjson")
cjson.encode_number_precision(14)   -- the most this lua-cjson allows (ids of 19 digits lose their tail)
local cfg = cjson.decode(io.open(arg[1]):read("a"))
local api = cfg.api_url:gsub("/+$", "")
local track_url = cfg.event_tracking_url or "https://trackcmp.net/event"
local enabled = {}
for name, v in pairs(cfg.events or {}) do enabled[name] = v.enabled end
local policy_allow = (cfg.consent or {}).default_policy == "allow"
local GRANTED = { granted = true, ["true"] = true, yes = true, allow = true, allowed = true, accepted = true,
                  opt_in = true, ["opt-in"] = true, opted_in = true, ["1"] = true, on = true }

local function get(t, ...)
  for i = 1, select("#", ...) do
    if type(t) ~= "table" then return nil end
    t = t[select(i, ...)]
  end
  if t == cjson.null then return nil end
  return t
end

local function consent_state(ev)
  local c = get(ev, "context", "consent")
  local found = { get(c, "canonical", "marketing"), get(c, "categories", "marketing"), get(c, "marketing") }
  for i = 1, 3 do
    local v = found[i]
    if v ~= nil then
      if v == true then return "granted" end
      if type(v) == "string" and GRANTED[v:lower()] then return "granted" end
      if type(v) == "number" and v == 1 then return "granted" end
      return "denied"
    end
  end
  return nil
end

local function norm_email(s)
  if type(s) ~= "string" then return nil end
  s = s:match("^%s*(.-)%s*$"):lower()
  local at = s:find("@", 1, true)
  if not at or at == 1 or at == #s or s:find("@", at + 1, true) or s:find("%s") then return nil end
  return s
end

local function email_of(ev)
  return norm_email(get(ev, "traits", "email")) or norm_email(get(ev, "context", "traits", "email"))
      or norm_email(get(ev, "properties", "email"))
end

local function urlencode(s)
  s = tostring(s)
  return (s:gsub("[^%w%-%._%*]", function(c)
    if c == " " then return "+" end
    return string.format("%%%02X", c:byte())
  end))
end

local function form(fields)
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = urlencode(k) .. "=" .. (fields[k] == "[redacted]" and "[redacted]" or urlencode(fields[k])) end
  return table.concat(parts, "&")
end

local function sync(email, contact)
  return { method = "POST", url = api .. "/api/3/contact/sync",
           headers = { ["Api-Token"] = "[redacted]", ["Content-Type"] = "application/json" },
           body = cjson.encode({ contact = contact or { email = email } }) }
end

local function slug(name)
  local s = name:gsub("(%l)(%u)", "%1_%2"):lower():gsub("[^%w]+", "_"):gsub("^_+", ""):gsub("_+$", "")
  s = s:sub(1, 32):gsub("_+$", "")
  return s ~= "" and s or nil
end

local function track(email, name, data, state)
  if not cfg.event_tracking_account_id or not cfg.event_tracking_key then return nil, "Event Tracking is not configured" end
  data.consent = state
  return { sync(email), { method = "POST", url = track_url,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    body = form({ actid = cfg.event_tracking_account_id, key = "[redacted]", event = name,
                  eventdata = cjson.encode(data), visit = cjson.encode({ email = email }) }) } }
end

local function map(ev)
  local t = ev.type
  local name
  if t == "track" then
    name = ev.event
    if type(name) ~= "string" or name == "" then return "error", "no event name" end
    if name ~= "Product Viewed" and name ~= "Order Completed" and not enabled[name] then
      return "drop", "custom event not enabled"
    end
  elseif t ~= "page" and t ~= "identify" then
    return "drop", "not mapped"
  end
  local state = consent_state(ev)
  if state == "denied" or (state == nil and not policy_allow) then return "drop", "consent" end
  state = state or "unknown"
  local email = email_of(ev)
  if not email then return "drop", "no email" end
  local p = ev.properties or {}
  if t == "identify" then
    local tr = ev.traits or {}
    local c = { email = email, firstName = get(tr, "first_name") or get(tr, "firstName"),
                lastName = get(tr, "last_name") or get(tr, "lastName"), phone = get(tr, "phone") }
    for k, v in pairs(c) do if v == "" then c[k] = nil end end
    return "deliver", { sync(email, c) }
  elseif t == "page" then
    return "deliver", track(email, "page_view", { url = get(ev, "context", "page", "url") or get(p, "url"),
      title = get(ev, "context", "page", "title") or get(p, "title"), name = ev.name }, state)
  elseif name == "Product Viewed" then
    return "deliver", track(email, "product_viewed", { product_id = get(p, "product_id") or get(p, "id"),
      name = get(p, "name"), price = get(p, "price"), currency = get(p, "currency") }, state)
  elseif name == "Order Completed" then
    return "deliver", track(email, "purchase", { order_id = get(p, "order_id"),
      revenue = get(p, "revenue") or get(p, "total"), currency = get(p, "currency") }, state)
  end
  local data = {}
  for k, v in pairs(p) do data[k] = v end
  local s = slug(name)
  if not s then return "drop", "no usable name" end
  return "deliver", track(email, s, data, state)
end

local index = 0
local out = {}
for line in io.lines() do
  local ok, ev = pcall(cjson.decode, line)
  local outcome, res
  if not ok or type(ev) ~= "table" then outcome, res = "error", "malformed event"
  else outcome, res = map(ev) end
  local rec = { index = index, outcome = outcome }
  if outcome == "deliver" then
    if type(res) == "table" then rec.requests = res else rec.outcome = "drop"; rec.reason = res end
  else
    rec.reason = res
  end
  out[#out + 1] = cjson.encode(rec)
  index = index + 1
  if #out == 512 then io.write(table.concat(out, "\n"), "\n"); out = {} end
end
if #out > 0 then io.write(table.concat(out, "\n"), "\n") end
