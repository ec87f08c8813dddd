-- Shared helpers for the busted specs: the core module, the default
-- ActiveCampaign blueprint with a known config, and small decoders.
local core = require("blueprint_core")

local S = { core = core, AC = "blueprints/activecampaign" }

S.bin = os.getenv("BLUEPRINT_BIN") or "build/blueprint"

S.API_KEY = "ak-7f3e9c2b-DO-NOT-LEAK"
S.TRACK_KEY = "tk-51d0a8-DO-NOT-LEAK"

S.base_config = table.concat({
  "api_url: https://acme.api-us1.com",
  "api_key: " .. S.API_KEY,
  "event_tracking_account_id: \"223344\"",
  "event_tracking_key: " .. S.TRACK_KEY,
}, "\n") .. "\n"

-- An engine on the default blueprint; `extra` is YAML appended to the config.
function S.engine(extra, limits)
  local e, err = core.open_text(S.AC, S.base_config .. (extra or ""), limits)
  assert(e, err)
  return e
end

-- Run one event (a Lua table or JSON text) and decode the dry-run line.
function S.run(engine, event)
  local text = type(event) == "string" and event or assert(core.json_encode(event))
  local line = engine:run(text)
  local out = assert(core.json_decode(line), "dry-run line is not JSON: " .. line)
  out._line = line
  return out
end

local function unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- application/x-www-form-urlencoded -> table
function S.form(body)
  local t = {}
  for pair in body:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    t[unescape(k)] = unescape(v)
  end
  return t
end

-- Consent context in each of the three shapes Signal uses.
function S.consent(shape, value)
  if shape == "canonical" then return { consent = { canonical = { marketing = value } } } end
  if shape == "categories" then return { consent = { categories = { marketing = value } } } end
  return { consent = { marketing = value } }
end

function S.granted() return S.consent("canonical", true) end

-- Run a shell command; returns stdout, stderr, exit code.
function S.sh(cmd, stdin)
  local out, errf = os.tmpname(), os.tmpname()
  local inf
  if stdin then
    inf = os.tmpname()
    local f = assert(io.open(inf, "wb")); f:write(stdin); f:close()
    cmd = cmd .. " < " .. inf
  end
  local ok, _, code = os.execute(cmd .. " > " .. out .. " 2> " .. errf)
  local function slurp(p) local f = io.open(p, "rb"); local s = f:read("a"); f:close(); os.remove(p); return s end
  local o, e = slurp(out), slurp(errf)
  if inf then os.remove(inf) end
  return o, e, ok and 0 or code
end

function S.write(path, text)
  local f = assert(io.open(path, "wb")); f:write(text); f:close()
end

function S.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. p))
  return p
end

function S.lines(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

return S
