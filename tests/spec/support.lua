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

-- The Event Tracking request of a dry-run outcome (after its contact sync).
function S.tracked(out)
  for _, r in ipairs(out.requests) do
    if r.url:match("/event$") then return r end
  end
  error("no Event Tracking request in: " .. (out._line or "?"))
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

-- ---- the ActiveCampaign emulator (tests/emulator, build/ac-emulator) ----

local function sleep(s) os.execute("sleep " .. s) end
S.sleep = sleep

-- Every process a spec starts (emulator, serve, the Kafka mock) is recorded
-- here, and whatever happens to its test it is stopped when its spec file
-- ends: a test that fails or errors before its stop() (or finally()) no
-- longer leaves it running after `make test` (scripts/run-tests.sh fails the
-- run if anything is).  At the file's end rather than the test's: a server
-- restarted inside a test may serve the file's later tests.  A stop that
-- finds a sanitizer report still fails (the file's end reports the error).
local running = {}
local function track(h) running[h] = true end
local function stop_started()
  local errors = {}
  for h in pairs(running) do
    running[h] = nil
    local ok, err = pcall(h.stop)
    if not ok then errors[#errors + 1] = tostring(err) end
  end
  if #errors > 0 then error(table.concat(errors, "\n"), 0) end
end
do
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and busted.subscribe then
    busted.subscribe({ "file", "end" }, function() stop_started(); return nil, true end)
  end
end

-- Send SIGTERM to pid and wait (at most 30 s: a sanitizer build on a busy
-- machine can take a while to finish its requests in flight) until it is
-- gone; returns true when it had to be killed instead.
local function terminate(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, 1500 do
    if not os.execute("kill -0 " .. pid .. " 2>/dev/null") then return false end
    sleep(0.02)
  end
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  return true
end

-- Start an emulator on a free loopback port; returns a handle with url, port,
-- get/post helpers and stop().  Stop it when done (use finally()); one left
-- running is stopped when its test or file ends (above).
-- Start a server command in the background and wait for its
-- "listening on http://127.0.0.1:PORT" line; returns pid and port.
local function start_listening(cmd, what, errf, seconds)
  local out, pidf = os.tmpname(), os.tmpname()
  os.execute(cmd .. " > " .. out .. " 2> " .. (errf or "/dev/null") .. " & echo $! > " .. pidf)
  local pid = io.open(pidf):read("l")
  os.remove(pidf)
  local port
  for _ = 1, math.floor((seconds or 5) / 0.02) do
    local f = io.open(out)
    local text = f and f:read("a") or ""
    if f then f:close() end
    port = text:match("listening on http://127%.0%.0%.1:(%d+)")
    if port then break end
    sleep(0.02)
  end
  if not port then os.execute("kill " .. pid .. " 2>/dev/null") end
  assert(port, what .. " did not start")
  os.remove(out)
  return pid, port
end

function S.start_emulator(args)
  local pid, port = start_listening("build/ac-emulator --port 0 " .. (args or ""), "the emulator")
  local emu = { pid = pid, port = port, url = "http://127.0.0.1:" .. port }
  function emu.get(path)
    local p = io.popen("curl -s " .. emu.url .. path)
    local body = p:read("a")
    p:close()
    -- its state and request log run to megabytes in a long test (batch_kill_spec)
    local v = S.core.json_decode(body, 256 << 20)
    return assert(v, "emulator answered: " .. body:sub(1, 2000))
  end
  function emu.post(path, json)
    local f = os.tmpname()
    S.write(f, json)
    local p = io.popen("curl -s -X POST --data-binary @" .. f .. " " .. emu.url .. path)
    local body = p:read("a")
    p:close()
    os.remove(f)
    return S.core.json_decode(body)
  end
  function emu.faults(t) return emu.post("/_emulator/faults", assert(S.core.json_encode(t))) end
  function emu.requests() return emu.get("/_emulator/requests") end
  function emu.contacts() return emu.get("/_emulator/contacts") end
  function emu.stop()
    if emu.stopped then return end
    emu.stopped = true
    running[emu] = nil
    terminate(pid)
  end
  track(emu)
  return emu
end

S.EMU_TOKEN = "emulator-api-token"
S.EMU_EVENT_KEY = "emulator-event-key"

-- The credentials of emulator account k (ac-emulator --accounts N): account 0
-- is the default one; each has its own base URL (curl resolves *.localhost
-- to loopback) and its own rate limit.
function S.emulator_account(emu, k)
  return {
    api_url = k == 0 and emu.url or ("http://acct" .. k .. ".localhost:" .. emu.port),
    api_key = k == 0 and S.EMU_TOKEN or (S.EMU_TOKEN .. "-" .. k),
    event_tracking_account_id = tostring(1000001 + k),
    event_tracking_key = k == 0 and S.EMU_EVENT_KEY or (S.EMU_EVENT_KEY .. "-" .. k),
    event_tracking_url = emu.url .. "/event",
  }
end

-- A config file pointing the ActiveCampaign blueprint at the emulator.
function S.emulator_config(emu, overrides)
  local o = overrides or {}
  local text = table.concat({
    "api_url: " .. emu.url,
    "api_key: " .. (o.api_key or S.EMU_TOKEN),
    "event_tracking_account_id: \"1000001\"",
    "event_tracking_key: " .. (o.event_key or S.EMU_EVENT_KEY),
    "event_tracking_url: " .. emu.url .. "/event",
    "events:",
    "  Webinar Registered: {enabled: true}",
  }, "\n") .. "\n"
  local path = os.tmpname()
  S.write(path, text)
  return path
end

-- Run `blueprint deliver`; returns decoded outcome lines, stderr, exit code.
function S.deliver(args, stdin)
  local out, err, code = S.sh(S.bin .. " deliver " .. S.AC .. " " .. args, stdin)
  local lines = {}
  for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
  return lines, err, code, out
end

function S.by_index(lines)
  local t = {}
  for _, l in ipairs(lines) do if l.index ~= S.core.null then t[l.index] = l end end
  return t
end

-- ---- the service (build/blueprint serve) ----

-- Start `blueprint serve` on a free port with its own state; returns a handle
-- with url, token(role), call(method, path, body, token) and stop().
function S.start_server(opts)
  opts = opts or {}
  local state = opts.state or S.tmpdir()
  local blueprints = opts.blueprints or "blueprints"
  local errf = opts.log or os.tmpname()
  -- opts.rate: a pace for every account (default 100/s); false = the blueprint's own (5/s)
  local rate = opts.rate == false and "" or (" --rate-limit " .. (opts.rate or 100))
  local env = opts.env and (opts.env .. " ") or ""
  local pid, port = start_listening(env .. S.bin .. " serve --port " .. (opts.port or 0) .. " --state " .. state .. " --blueprints " .. blueprints
    .. rate .. " --retry-base-ms " .. (opts.retry_base_ms or 20) .. (opts.args and (" " .. opts.args) or ""),
    "the server", errf, opts.start_seconds)
  local srv = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, state = state, log = errf, bodies = {} }
  -- extra: more `blueprint token` options, e.g. "--subject ada --issuer signal"
  function srv.token(role, ttl, extra)
    local p = io.popen(env .. S.bin .. " token --role " .. role .. " --state " .. state .. (ttl and (" --ttl " .. ttl) or "")
      .. (extra and (" " .. extra) or ""))
    local t = p:read("l")
    p:close()
    return t
  end
  local admin = srv.token("admin")
  -- returns status, decoded body (or raw text), raw text
  function srv.call(method, path, body, token)
    local f = os.tmpname()
    local auth = token == false and "" or (" -H 'Authorization: Bearer " .. (token or admin) .. "'")
    local data = ""
    if body then S.write(f, body); data = " --data-binary @" .. f end
    local p = io.popen("curl -s -o " .. f .. ".out -w '%{http_code}' -X " .. method .. auth
      .. " -H 'Content-Type: application/json'" .. data .. " '" .. srv.url .. path .. "'")
    local status = tonumber(p:read("a"))
    p:close()
    local fh = io.open(f .. ".out")
    local text = fh and fh:read("a") or ""
    if fh then fh:close() end
    os.remove(f); os.remove(f .. ".out")
    srv.bodies[#srv.bodies + 1] = text
    return status, S.core.json_decode(text) or text, text
  end
  -- Stop with SIGTERM and wait.  A sanitizer build reports what it found
  -- (use after free, leaks at exit) on stderr, which is the log: fail then.
  function srv.stop()
    if srv.stopped then return end
    srv.stopped = true
    running[srv] = nil
    srv.killed = terminate(pid)
    local log = srv.logs()
    local at = log:find("ERROR: %a+Sanitizer") or log:find("WARNING: ThreadSanitizer")
    if at then error("the server's sanitizer reported:\n" .. log:sub(at, at + 3000), 2) end
  end
  -- the server's thread count, from /proc
  function srv.threads()
    local f = io.open("/proc/" .. pid .. "/status")
    local text = f and f:read("a") or ""
    if f then f:close() end
    return tonumber(text:match("Threads:%s+(%d+)"))
  end
  function srv.kill() os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
  function srv.logs()
    local fh = io.open(errf)
    local t = fh and fh:read("a") or ""
    if fh then fh:close() end
    return t
  end
  track(srv)
  return srv
end

-- Many HTTP calls from one curl process (-Z): `calls` is a list of
-- {method, path, body}.  Returns the list of {status, body} in call order.
function S.many(srv, calls, parallel)
  local dir = S.tmpdir()
  local cfg = {}
  local token = srv.token("admin")
  for i, c in ipairs(calls) do
    local bodyf = dir .. "/in" .. i
    if c[3] then S.write(bodyf, c[3]) end
    cfg[#cfg + 1] = table.concat({
      'url = "' .. srv.url .. c[2] .. '"',
      'request = "' .. c[1] .. '"',
      'header = "Authorization: Bearer ' .. token .. '"',
      'header = "Content-Type: application/json"',
      c[3] and ('data-binary = "@' .. bodyf .. '"') or "",
      'output = "' .. dir .. "/out" .. i .. '"',
      'write-out = "%{http_code} ' .. i .. '\\n"',
    }, "\n")
  end
  S.write(dir .. "/curl.cfg", table.concat(cfg, "\nnext\n") .. "\n")
  local p = io.popen("curl -s -Z --parallel-max " .. (parallel or 8) .. " -K " .. dir .. "/curl.cfg 2>/dev/null")
  local text = p:read("a")
  p:close()
  local out = {}
  for status, i in text:gmatch("(%d+) (%d+)") do
    local f = io.open(dir .. "/out" .. i)
    local body = f and f:read("a") or ""
    if f then f:close() end
    out[tonumber(i)] = { tonumber(status), S.core.json_decode(body) or body }
  end
  os.execute("rm -rf " .. dir)
  return out
end

function S.install_body(name, account)
  return S.core.json_encode({ name = name, variant = "default", delivery_mode = "server_side", config = account })
end

-- For every account: the most requests the emulator received in any one
-- second, and when the 429s were (ms after the first request of the run).
function S.pacing_report(requests)
  local by_account, first = {}, math.huge
  for _, r in ipairs(requests) do
    if r.account >= 0 then
      by_account[r.account] = by_account[r.account] or {}
      table.insert(by_account[r.account], r)
      if r.at_ms < first then first = r.at_ms end
    end
  end
  local worst, worst_account, late_429, window = 0, nil, {}, ""
  for account, list in pairs(by_account) do
    table.sort(list, function(a, b) return a.at_ms < b.at_ms end)
    local j = 1
    for i = 1, #list do
      while list[i].at_ms - list[j].at_ms >= 1000 do j = j + 1 end
      if i - j + 1 > worst then
        worst, worst_account = i - j + 1, account
        local t = {}
        for k = j, i do t[#t + 1] = ("%.1f ms: %s %d"):format(list[k].at_ms - first, list[k].path, list[k].status) end
        window = table.concat(t, "; ")
      end
      if list[i].status == 429 and list[i].at_ms - first > 1000 then late_429[#late_429 + 1] = list[i] end
    end
  end
  return worst, worst_account, late_429, window
end

-- ---- Kafka (tests/kafka/mock-cluster.c: librdkafka's mock cluster) ----

-- A 3-broker mock Kafka cluster on loopback; down()/up() take every broker
-- away and back (SIGUSR1/SIGUSR2).
function S.start_kafka()
  local ready = os.tmpname()
  os.remove(ready)
  local pidf = os.tmpname()
  os.execute("build/kafka-mock-cluster --ready " .. ready .. " > /dev/null 2>&1 & echo $! > " .. pidf)
  local pid = io.open(pidf):read("l")
  os.remove(pidf)
  local brokers = S.eventually(function()
    local f = io.open(ready)
    local b = f and f:read("l")
    if f then f:close() end
    return b
  end, 10)
  assert(brokers, "the mock Kafka cluster did not start")
  os.remove(ready)
  local k = { pid = pid, brokers = brokers }
  function k.down() os.execute("kill -USR1 " .. pid) end
  function k.up() os.execute("kill -USR2 " .. pid) end
  function k.stop()
    if k.stopped then return end
    k.stopped = true
    running[k] = nil
    terminate(pid)
  end
  track(k)
  return k
end

-- A cluster's key file and the environment each of its nodes starts with
-- (one master key: every node opens the secrets another sealed).  Returns
-- env, keyfile; S.stop_cluster removes the file.
function S.cluster_env()
  local keyfile = os.tmpname()
  local f = io.popen("openssl rand -hex 32")
  S.write(keyfile, "kspec " .. f:read("l") .. "\n")
  f:close()
  return "BLUEPRINT_JWT_SECRET=kafka-spec-secret-at-least-32-bytes BLUEPRINT_MASTER_KEY_FILE=" .. keyfile, keyfile
end

-- Stop every node of `nodes` (a list, with holes), then the emulator and
-- the brokers, and remove the key file; fails naming each node that did not
-- stop cleanly (a sanitizer report in its log).
function S.stop_cluster(nodes, emu, kafka, keyfile)
  local reports = {}
  for i, node in pairs(nodes) do
    local ok, why = pcall(function() node.stop() end)
    if not ok then reports[#reports + 1] = "node " .. i .. ": " .. tostring(why) end
  end
  if emu then emu.stop() end
  if kafka then kafka.stop() end
  if keyfile then os.remove(keyfile) end
  assert(#reports == 0, table.concat(reports, "\n"))
end

-- Poll fn() until it returns a truthy value or `seconds` pass.
function S.eventually(fn, seconds)
  local v
  for _ = 1, math.floor((seconds or 5) / 0.05) do
    v = fn()
    if v then return v end
    sleep(0.05)
  end
  return v
end

function S.identify(email, id)
  return ('{"type":"identify","messageId":"%s","traits":{"email":"%s"},"context":{"consent":{"marketing":true}}}')
    :format(id or email, email)
end

function S.track_json(name, email, props, id)
  return ('{"type":"track","event":"%s","messageId":"%s","properties":%s,"context":{"traits":{"email":"%s"},'
    .. '"consent":{"marketing":true}}}'):format(name, id or name, props or "{}", email)
end

return S
