-- `make bench`: cluster mode (`serve --kafka`) on librdkafka's mock cluster,
-- next to the single-node SQLite path.
--
--   lua5.4 scripts/bench/cluster.lua WORKDIR NODES EVENTS [BATCH]
--
-- NODES >= 1: starts build/kafka-mock-cluster (3 brokers, one process), the
-- emulator (rate limit off, 8 accounts) and NODES `serve --kafka` nodes;
-- installs 8 integrations (one per account: each its own topic, 4
-- partitions); waits until the consumer group has spread all 32 partitions
-- and stayed so for 2 s; posts one warm-up event per integration through
-- every node and waits for its delivery; then posts EVENTS identify events
-- (each a new contact: one vendor request), BATCH per request (200), over
-- the integrations and the nodes' intake, with one curl process (8 in
-- parallel), and samples every ~0.1 s until every event is delivered and the
-- consumer lag is back to 0.
-- NODES = 0: the same burst against one plain `serve` (SQLite, no --kafka).
--
-- Prints key=value lines, among them:
--   intake_eps      events accepted (202) per second while posting
--   e2e_eps         events delivered at the emulator ÷ (first post → last delivery)
--   lag_end, lag_peak, lag_1s   the sum of blueprint_kafka_consumer_lag over the
--                   nodes, in messages (one per intake request: BATCH events), at
--                   the end of posting, the highest sample, the first sample >= 1 s
--                   later; drain_s: end of posting → lag 0 and all delivered.
--                   NODES = 0: the same from blueprint_queue_depth (in events).
--   node_us_per_event  user + sys CPU of all node processes ÷ delivered events
--                   (before the burst → drained); node_rdk_us_per_event the part in
--                   librdkafka's threads; mock_us_per_event the mock brokers'
--                   process; emu_us_per_event the emulator's.
--   duplicates (emulator requests − new contacts), intake_failures, log_errors.
--   intake_p50_ms, intake_p99_ms  then, drained: 400 one-event POSTs through the
--                   first node, 8 at a time (curl's time per request).
local W, NODES, EVENTS, BATCH = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4] or 200)
local core = require("blueprint_core")
local INTEGRATIONS = 8
local PARTITIONS = 4           -- the mock's default for a topic it auto-creates
local SECRET = "bench-cluster-secret-of-32-bytes-or-more"   -- the minimum is 32

-- a child killed by SIGINT/SIGTERM (Ctrl-C reaches the whole process group,
-- and os.execute ignores SIGINT while it waits) stops the run
local INTERRUPTED = "interrupted"
local function check(ok, how, n)
  if not ok and how == "signal" and (n == 2 or n == 15) then error(INTERRUPTED, 0) end
  return ok, how, n
end
local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  check(p:close())
  return out
end
local function now_ms() return tonumber(sh("date +%s%3N")) end
local function write(path, text) local f = assert(io.open(path, "wb")); f:write(text); f:close() end
local function read(path) local f = io.open(path); if not f then return nil end local t = f:read("a"); f:close(); return t end
local pids = {}   -- every process started here
local function alive(pid)   -- and not a zombie
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("%) (%a)")
  f:close()
  return state ~= nil and state ~= "Z"
end
-- a started process that is gone (crashed, or Ctrl-C) stops the run
local function sleep(s)
  check(os.execute("sleep " .. s))
  for _, p in ipairs(pids) do
    if not alive(p) then error("process " .. p .. " is gone (crashed, or interrupted)", 0) end
  end
end
local function log(fmt, ...) io.stderr:write(("# cluster.lua: " .. fmt .. "\n"):format(...)) end

-- every process started here is listed in PIDFILE (bench.sh's trap kills
-- them too if this script dies) and stopped at the end
local PIDFILE = W .. "/cluster.pids"
local function track(pid)
  pids[#pids + 1] = pid
  write(PIDFILE, table.concat(pids, "\n") .. "\n")
  return pid
end
local function stop_all()
  for i = #pids, 1, -1 do os.execute("kill -TERM " .. pids[i] .. " 2>/dev/null") end
  for _ = 1, 100 do  -- up to 5 s for a clean leave of the group
    local any = false
    for _, p in ipairs(pids) do if alive(p) then any = true end end
    if not any then break end
    os.execute("sleep 0.05")
  end
  for _, p in ipairs(pids) do os.execute("kill -KILL " .. p .. " 2>/dev/null") end
  os.remove(PIDFILE)
end

-- start a background command (its own pid: a simple command after `&`)
local function spawn(cmd, out)
  return track(sh(cmd .. " > " .. out .. " 2> " .. out .. ".err & echo $!"):match("%d+"))
end
local function wait_listening(out, seconds)
  for _ = 1, seconds * 20 do
    local port = (read(out) or ""):match("listening on http://127%.0%.0%.1:(%d+)")
    if port then return port end
    sleep(0.05)
  end
  error("did not start (see " .. out .. ".err)")
end

local TICKS = tonumber(sh("getconf CLK_TCK"))
local function cpu_s(pid)   -- user + system time of the whole process (every thread)
  local f = (read("/proc/" .. pid .. "/stat") or ""):match("%) (.*)")
  if not f then return 0 end
  local fields = {}
  for x in f:gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / TICKS
end

-- user + system time of the process's librdkafka threads (named rdk:*)
local function rdk_cpu_s(pid)
  local t = 0
  for tid in sh("ls /proc/" .. pid .. "/task 2>/dev/null"):gmatch("%d+") do
    local comm, rest = (read("/proc/" .. pid .. "/task/" .. tid .. "/stat") or ""):match("%((.-)%) (.*)")
    if comm and comm:sub(1, 4) == "rdk:" then
      local fields = {}
      for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
      t = t + (tonumber(fields[12]) + tonumber(fields[13])) / TICKS
    end
  end
  return t
end

local function main()
  os.execute("mkdir -p " .. W)
  local tag = NODES > 0 and ("c" .. NODES) or "sqlite"
  local D = W .. "/cluster-" .. tag
  os.execute("rm -rf " .. D .. " && mkdir -p " .. D)

  -- the emulator: rate limit off, accounts 0..7 (each its own host and token)
  local emu_pid = spawn("build/ac-emulator --port 0 --rate-limit 0 --accounts " .. INTEGRATIONS, D .. "/emu.out")
  local emu_port = wait_listening(D .. "/emu.out", 10)
  local emu = "http://127.0.0.1:" .. emu_port
  local function emu_stats() return core.json_decode(sh("curl -s " .. emu .. "/_emulator/stats")) end

  -- Kafka (mock) and the nodes
  local env, kafka_args, mock_pid = "BLUEPRINT_JWT_SECRET=" .. SECRET, "", nil
  if NODES > 0 then
    os.remove(D .. "/ready")
    mock_pid = spawn("build/kafka-mock-cluster --ready " .. D .. "/ready", D .. "/mock.out")
    local brokers
    for _ = 1, 200 do
      brokers = (read(D .. "/ready") or ""):match("%S+")
      if brokers then break end
      sleep(0.05)
    end
    assert(brokers, "the mock Kafka cluster did not start")
    local key = sh("openssl rand -hex 32"):match("%x+")
    assert(key and #key == 64, "openssl rand")
    write(D .. "/master.key", "kbench " .. key .. "\n")
    os.execute("chmod 600 " .. D .. "/master.key")
    env = env .. " BLUEPRINT_MASTER_KEY_FILE=" .. D .. "/master.key"
    kafka_args = " --kafka " .. brokers .. " --kafka-session-timeout-ms 6000"
  end
  local nodes = {}
  local t_start = now_ms()
  for i = 1, math.max(NODES, 1) do
    local n = { state = D .. "/n" .. i, out = D .. "/n" .. i .. ".out" }
    n.pid = spawn(env .. " build/blueprint serve --port 0 --state " .. n.state .. " --blueprints blueprints"
      .. " --rate-limit 1000000" .. kafka_args .. (NODES > 0 and (" --node node" .. i) or ""), n.out)
    nodes[i] = n
  end
  for _, n in ipairs(nodes) do n.url = "http://127.0.0.1:" .. wait_listening(n.out, 60) end
  local start_s = (now_ms() - t_start) / 1000
  local token = sh(env .. " build/blueprint token --role admin --state " .. nodes[1].state):match("%S+")
  local function get(node, path)
    return core.json_decode(sh("curl -s -H 'Authorization: Bearer " .. token .. "' " .. node.url .. path))
  end

  -- many POSTs through one curl process (8 in parallel); returns the status codes
  local function post_many(calls, cfgname, background)
    local cfg = {}
    for i, c in ipairs(calls) do
      write(("%s/body%d"):format(D, i), c[2])
      cfg[#cfg + 1] = ('url = "%s"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\n'
        .. 'header = "Content-Type: application/json"\ndata-binary = "@%s/body%d"\noutput = "%s/resp%d"\n'
        .. 'write-out = "%%{http_code}\\n"'):format(c[1], token, D, i, D, i)
    end
    write(D .. "/" .. cfgname, table.concat(cfg, "\nnext\n") .. "\n")
    local cmd = "curl -s -Z --parallel-max 8 -K " .. D .. "/" .. cfgname .. " > " .. D .. "/" .. cfgname .. ".codes 2>/dev/null"
    if background then
      os.remove(D .. "/" .. cfgname .. ".done")
      os.execute("(" .. cmd .. "; date +%s%3N > " .. D .. "/" .. cfgname .. ".done.tmp; mv " .. D .. "/" .. cfgname
        .. ".done.tmp " .. D .. "/" .. cfgname .. ".done) > /dev/null 2>&1 &")
      return
    end
    os.execute(cmd)
    return read(D .. "/" .. cfgname .. ".codes")
  end
  local function bad_codes(codes, ok)
    local bad = 0
    for code in codes:gmatch("%d+") do if code ~= ok then bad = bad + 1 end end
    return bad
  end

  -- install: one integration per account, through the nodes in turn
  local calls = {}
  for k = 0, INTEGRATIONS - 1 do
    calls[#calls + 1] = { nodes[k % #nodes + 1].url .. "/v1/admin/integration-catalog/activecampaign/install",
      core.json_encode({ name = "cluster-bench-" .. k, config = {
        api_url = k == 0 and emu or ("http://acct" .. k .. ".localhost:" .. emu_port),
        api_key = k == 0 and "emulator-api-token" or ("emulator-api-token-" .. k) } }) }
  end
  local codes = post_many(calls, "install.cfg")
  assert(bad_codes(codes, "201") == 0, "installs failed: " .. codes)
  local ids = {}
  for i = 1, INTEGRATIONS do ids[i] = read(D .. "/resp" .. i):match('"id":"([^"]+)"') end

  -- the consumer group: every partition assigned, each node some, for 2 s
  local settle_s, idle_cpu_pct = 0, 0
  if NODES > 0 then
    local t0, stable_since, cpu0 = now_ms(), nil, nil
    local want = INTEGRATIONS * PARTITIONS
    while true do
      local total, each = 0, true
      for _, n in ipairs(nodes) do
        local h = get(n, "/healthz")
        local a = h and h.kafka and #h.kafka.assigned_partitions or 0
        total = total + a
        if a == 0 then each = false end
      end
      local t = now_ms()
      if total == want and (each or #nodes > want) then
        if not stable_since then
          stable_since = t
          cpu0 = 0
          for _, n in ipairs(nodes) do cpu0 = cpu0 + cpu_s(n.pid) end
        elseif t - stable_since >= 2000 then
          local cpu1 = 0
          for _, n in ipairs(nodes) do cpu1 = cpu1 + cpu_s(n.pid) end
          idle_cpu_pct = (cpu1 - cpu0) / ((t - stable_since) / 1000) * 100
          break
        end
      else
        stable_since = nil
      end
      if t - t0 > 120000 then error(("the group did not settle: %d of %d partitions assigned"):format(total, want)) end
      sleep(0.2)
    end
    settle_s = (now_ms() - t0) / 1000
  end

  local function ident(prefix, i)
    return ('{"type":"identify","messageId":"%s%d","traits":{"email":"%s%d@example.com"},'
      .. '"context":{"consent":{"marketing":true}}}'):format(prefix, i, prefix, i)
  end

  -- warm-up: one event per integration through every node (producer
  -- metadata for each topic), every one delivered
  calls = {}
  for i, id in ipairs(ids) do
    for j, n in ipairs(nodes) do
      calls[#calls + 1] = { n.url .. "/v1/integrations/" .. id .. "/events", ident("w" .. i .. "-" .. j .. "-", 1) }
    end
  end
  codes = post_many(calls, "warm.cfg")
  assert(bad_codes(codes, "202") == 0, "warm-up posts failed: " .. codes)
  local warm = #calls
  for _ = 1, 600 do
    if emu_stats().requests >= warm then break end
    sleep(0.1)
  end
  assert(emu_stats().requests >= warm, "the warm-up events were not delivered")
  sleep(1)   -- offsets committed (every second)

  -- the burst: EVENTS identifies, BATCH per request, request r to integration
  -- r % 8 through node (r // 8) % NODES
  calls = {}
  local nreq = math.ceil(EVENTS / BATCH)
  local e = 0
  for r = 0, nreq - 1 do
    local evs = {}
    for _ = 1, math.min(BATCH, EVENTS - e) do e = e + 1; evs[#evs + 1] = ident("c", e) end
    local n = nodes[(r // INTEGRATIONS) % #nodes + 1]
    calls[#calls + 1] = { n.url .. "/v1/integrations/" .. ids[r % INTEGRATIONS + 1] .. "/events", table.concat(evs, "\n") }
  end

  local metric_urls = {}
  for _, n in ipairs(nodes) do metric_urls[#metric_urls + 1] = n.url .. "/metrics" end
  metric_urls = table.concat(metric_urls, " ")
  local function backlog()   -- Kafka: sum of consumer lag over the nodes; SQLite: queue depth
    local text, sum = sh("curl -s " .. metric_urls), 0
    if NODES > 0 then
      for v in text:gmatch('blueprint_kafka_consumer_lag{[^}]*} (%d+)') do sum = sum + tonumber(v) end
    else
      for v in text:gmatch('\nblueprint_queue_depth (%d+)') do sum = sum + tonumber(v) end
    end
    return sum
  end

  local s0 = emu_stats()
  local base = s0.requests
  local function cpu_nodes() local c = 0; for _, n in ipairs(nodes) do c = c + cpu_s(n.pid) end return c end
  local node_cpu0, mock_cpu0, emu_cpu0 = {}, mock_pid and cpu_s(mock_pid) or 0, cpu_s(emu_pid)
  local rdk_cpu0 = 0
  for i, n in ipairs(nodes) do node_cpu0[i] = cpu_s(n.pid); rdk_cpu0 = rdk_cpu0 + rdk_cpu_s(n.pid) end
  local t0 = now_ms()
  post_many(calls, "burst.cfg", true)
  local t_posted, t_delivered, t_drained, lag_end, lag_peak, lag_1s = nil, nil, nil, nil, 0, nil
  local delivered = 0
  while true do
    local t = now_ms()
    if not t_posted then
      local d = read(D .. "/burst.cfg.done")
      t_posted = d and tonumber(d:match("%d+"))
    end
    local lag = backlog()
    if lag > lag_peak then lag_peak = lag end
    if t_posted and not lag_end then lag_end = lag end
    if t_posted and not lag_1s and t - t_posted >= 1000 then lag_1s = lag end
    delivered = emu_stats().requests - base
    if delivered >= EVENTS and not t_delivered then t_delivered = now_ms() end
    if t_delivered and lag_end and lag == 0 then t_drained = now_ms(); break end
    if t - t0 > 180000 then log("timed out: %d of %d delivered, lag %d", delivered, EVENTS, lag); break end
    sleep(0.1)
  end
  local node_cpu, node_cpu_each, rdk_cpu = 0, {}, -rdk_cpu0
  for i, n in ipairs(nodes) do
    rdk_cpu = rdk_cpu + rdk_cpu_s(n.pid)
    node_cpu_each[i] = cpu_s(n.pid) - node_cpu0[i]
    node_cpu = node_cpu + node_cpu_each[i]
  end
  local mock_cpu = mock_pid and (cpu_s(mock_pid) - mock_cpu0) or 0
  local emu_cpu = cpu_s(emu_pid) - emu_cpu0
  local s1 = emu_stats()
  codes = read(D .. "/burst.cfg.codes") or ""
  local intake_failures = bad_codes(codes, "202")
  local errors = 0
  for _, n in ipairs(nodes) do
    for _ in (read(n.out .. ".err") or ""):gmatch('"level":"error"') do errors = errors + 1 end
  end
  -- intake latency, after the burst has drained: PROBES one-event POSTs
  -- through the first node (a cluster node, or the SQLite serve), 8 at a
  -- time, each request's time as curl measured it
  local PROBES = 400
  local cfg = {}
  for i = 1, PROBES do
    write(("%s/probe%d"):format(D, i), ident("q", i))
    cfg[#cfg + 1] = ('url = "%s/v1/integrations/%s/events"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\n'
      .. 'header = "Content-Type: application/json"\ndata-binary = "@%s/probe%d"\noutput = "/dev/null"\n'
      .. 'write-out = "%%{http_code} %%{time_total}\\n"'):format(nodes[1].url, ids[(i - 1) % #ids + 1], token, D, i)
  end
  write(D .. "/probe.cfg", table.concat(cfg, "\nnext\n") .. "\n")
  local lat, probe_failures = {}, 0
  for code, secs in sh("curl -s -Z --parallel-max 8 -K " .. D .. "/probe.cfg 2>/dev/null"):gmatch("(%d+) ([%d.]+)") do
    if code == "202" then lat[#lat + 1] = tonumber(secs) * 1000 else probe_failures = probe_failures + 1 end
  end
  table.sort(lat)
  local function pct(q) return #lat > 0 and lat[math.max(1, math.ceil(#lat * q))] or -1 end
  local per = function(x) return delivered > 0 and x / delivered * 1e6 or 0 end
  local posted_s = ((t_posted or now_ms()) - t0) / 1000
  local e2e_s = ((t_delivered or now_ms()) - t0) / 1000

  print(("nodes=%d events=%d batch=%d requests=%d integrations=%d partitions=%d"):format(NODES, EVENTS, BATCH, nreq,
    INTEGRATIONS, NODES > 0 and INTEGRATIONS * PARTITIONS or 0))
  print(("start_s=%.1f settle_s=%.1f idle_cpu_pct=%.1f"):format(start_s, settle_s, idle_cpu_pct))
  print(("intake_eps=%.0f intake_s=%.2f intake_failures=%d"):format(EVENTS / posted_s, posted_s, intake_failures))
  print(("e2e_eps=%.0f e2e_s=%.2f delivered=%d duplicates=%d"):format(delivered / e2e_s, e2e_s, delivered,
    (s1.requests - s0.requests) - (s1.contacts - s0.contacts)))
  print(("lag_end=%d lag_peak=%d lag_1s=%d drain_s=%.1f"):format(lag_end or -1, lag_peak, lag_1s or 0,
    t_drained and (t_drained - (t_posted or t0)) / 1000 or -1))
  local each = {}
  for i, c in ipairs(node_cpu_each) do each[i] = ("%.2f"):format(c) end
  print(("node_cpu_s=%.2f node_cpu_each=%s mock_cpu_s=%.2f emu_cpu_s=%.2f"):format(node_cpu, table.concat(each, "/"),
    mock_cpu, emu_cpu))
  print(("node_us_per_event=%.1f node_rdk_us_per_event=%.1f mock_us_per_event=%.1f emu_us_per_event=%.1f"):format(
    per(node_cpu), per(rdk_cpu), per(mock_cpu), per(emu_cpu)))
  print(("log_errors=%d"):format(errors))
  print(("intake_p50_ms=%.1f intake_p99_ms=%.1f intake_probes=%d probe_failures=%d"):format(pct(0.5), pct(0.99), PROBES,
    probe_failures))
  return D
end

local ok, err = pcall(main)
stop_all()
-- the nodes' stores and the request bodies (~50 MB per node); the logs stay
if ok then os.execute("rm -rf " .. err .. "/n[0-9]*/ " .. err .. "/body* " .. err .. "/resp* " .. err .. "/master.key") end
if not ok then
  io.stderr:write("cluster.lua: " .. tostring(err) .. "\n")
  os.exit(1)
end
