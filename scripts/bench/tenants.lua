-- `make bench`: many integrations in one `serve`.
--
--   lua5.4 scripts/bench/tenants.lua WORKDIR INTEGRATIONS ACCOUNTS EVENTS_EACH WINDOW_S
--
-- Starts the emulator with ACCOUNTS accounts (5 requests/s each, as
-- ActiveCampaign) and a `serve` on the blueprint's own pacing, installs
-- INTEGRATIONS integrations spread over the accounts, posts EVENTS_EACH
-- identify events to each, then measures for WINDOW_S seconds while the
-- backlog drains: delivered requests/s at the emulator against the sum of
-- the accounts' quotas, serve's CPU per delivered request, and API latency
-- (sequential GETs of one integration and /healthz).  Prints key=value lines.
local W, N, A, E, WINDOW = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local core = require("blueprint_core")

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end
local function now_ms() return tonumber(sh("date +%s%3N")) end
local function write(path, text) local f = assert(io.open(path, "wb")); f:write(text); f:close() end
local function sleep(s) os.execute("sleep " .. s) end

local function start(cmd, out)
  local pid = sh(cmd .. " > " .. out .. " 2>" .. out .. ".err & echo $!"):match("%d+")
  for _ = 1, 200 do
    local port = sh("cat " .. out):match("listening on http://127%.0%.0%.1:(%d+)")
    if port then return pid, port end
    sleep(0.05)
  end
  error("did not start: " .. cmd)
end

local emu_pid, emu_port = start("build/ac-emulator --port 0 --rate-limit 5 --accounts " .. A, W .. "/t-emu.out")
os.execute("rm -rf " .. W .. "/t-state")
local srv_pid, srv_port = start("build/blueprint serve --port 0 --state " .. W .. "/t-state " .. (os.getenv("BENCH_SERVE_ARGS") or ""), W .. "/t-serve.out")
local base = "http://127.0.0.1:" .. srv_port
local token = sh("build/blueprint token --role admin --state " .. W .. "/t-state"):match("%S+")

local function proc(pid, field) return tonumber(sh("cat /proc/" .. pid .. "/status"):match(field .. ":%s+(%d+)")) end
local function fds(pid) return tonumber(sh("ls /proc/" .. pid .. "/fd | wc -l")) end
local function cpu_s(pid)   -- user + system time of the whole process
  local f = sh("cat /proc/" .. pid .. "/stat"):match("%) (.*)")
  local fields = {}
  for x in f:gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / tonumber(sh("getconf CLK_TCK"))
end
local function emu_stats() return core.json_decode(sh("curl -s http://127.0.0.1:" .. emu_port .. "/_emulator/stats")) end

-- many calls through one curl process; returns the bodies
local function many(calls)
  local cfg = {}
  for i, c in ipairs(calls) do
    cfg[#cfg + 1] = ('url = "%s%s"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\n'
      .. 'data-binary = "@%s/t-body%d"\noutput = "%s/t-out%d"\nwrite-out = "%%{http_code}\\n"'):format(
      base, c[1], token, W, i, W, i)
    write(W .. "/t-body" .. i, c[2])
  end
  write(W .. "/t-curl.cfg", table.concat(cfg, "\nnext\n") .. "\n")
  local codes = sh("curl -s -Z --parallel-max 8 -K " .. W .. "/t-curl.cfg 2>/dev/null")
  local bodies, bad = {}, 0
  for i = 1, #calls do
    local f = io.open(W .. "/t-out" .. i)
    bodies[i] = f and f:read("a") or ""
    if f then f:close() end
    os.remove(W .. "/t-out" .. i)
    os.remove(W .. "/t-body" .. i)
  end
  for code in codes:gmatch("%d+") do if code ~= "201" and code ~= "202" then bad = bad + 1 end end
  return bodies, bad
end

local function account(k)
  return {
    api_url = "http://acct" .. k .. ".localhost:" .. emu_port,
    api_key = k == 0 and "emulator-api-token" or ("emulator-api-token-" .. k),
  }
end

-- install
local calls = {}
for i = 1, N do
  calls[i] = { "/v1/admin/integration-catalog/activecampaign/install",
    core.json_encode({ name = "bench-" .. i, config = account((i - 1) % A) }) }
end
local t0 = now_ms()
local bodies, bad_installs = many(calls)
local install_s = (now_ms() - t0) / 1000
local ids = {}
for i, b in ipairs(bodies) do ids[i] = b:match('"id":"([^"]+)"') end
print(("install_s=%.1f install_failures=%d"):format(install_s, bad_installs))
print(("idle_rss_mb=%.1f threads=%d fds=%d"):format(proc(srv_pid, "VmRSS") / 1024, proc(srv_pid, "Threads"), fds(srv_pid)))

-- intake: E identifies per integration, each a new contact (one request each)
calls = {}
for i, id in ipairs(ids) do
  local evs = {}
  for k = 1, E do
    evs[k] = ('{"type":"identify","messageId":"b%d-%d","traits":{"email":"b%d-%d@example.com"},'
      .. '"context":{"consent":{"marketing":true}}}'):format(i, k, i, k)
  end
  calls[i] = { "/v1/integrations/" .. id .. "/events", table.concat(evs, "\n") }
end
t0 = now_ms()
local _, bad_posts = many(calls)
print(("intake_s=%.1f intake_failures=%d events=%d"):format((now_ms() - t0) / 1000, bad_posts, N * E))

-- the window: delivery at the accounts' quota, API latency alongside
sleep(2)
local s0, c0, w0 = emu_stats(), cpu_s(srv_pid), now_ms()
local lat = {}
local urls = {}
for k = 1, 100 do
  urls[#urls + 1] = k % 2 == 0 and (base .. "/healthz") or (base .. "/v1/admin/integrations/" .. ids[(k * 97) % #ids + 1])
end
local url_list = "-o /dev/null " .. table.concat(urls, " -o /dev/null ")
while now_ms() - w0 < WINDOW * 1000 do
  local out = sh("curl -s -w '%{time_total}\\n' -H 'Authorization: Bearer " .. token .. "' " .. url_list)
  for t in out:gmatch("[^\n]+") do lat[#lat + 1] = (tonumber(t) or 1e9) * 1000 end
  sleep(0.2)
end
local s1, c1, w1 = emu_stats(), cpu_s(srv_pid), now_ms()
local delivered = (s1.requests - s1.rate_limited) - (s0.requests - s0.rate_limited)
local secs = (w1 - w0) / 1000
table.sort(lat)
local p99 = lat[math.max(1, math.ceil(#lat * 0.99))] or 0
local p50 = lat[math.max(1, math.ceil(#lat * 0.5))] or 0
print(("delivered_rps=%.0f quota_rps=%d ratio=%.3f limited=%d"):format(delivered / secs, A * 5,
  delivered / secs / (A * 5), s1.rate_limited - s0.rate_limited))
print(("cpu_us_per_request=%.1f api_p50_ms=%.1f api_p99_ms=%.1f api_samples=%d"):format(
  delivered > 0 and (c1 - c0) / delivered * 1e6 or 0, p50, p99, #lat))
print(("backlog_left=%d"):format(N * E - s1.requests + s1.rate_limited))
print(("peak_rss_mb=%.1f threads_after=%d fds_after=%d"):format(proc(srv_pid, "VmHWM") / 1024,
  proc(srv_pid, "Threads"), fds(srv_pid)))
-- 429s: when, relative to the first request of their account
os.execute("curl -s http://127.0.0.1:" .. emu_port .. "/_emulator/requests > " .. W .. "/t-requests.json")
local f = io.open(W .. "/t-requests.json")
local reqs = {}   -- too big for the JSON module's limits: pick the fields out
for a, st, at in f:read("a"):gmatch('"account":(%-?%d+),"content_type":.-,"status":(%d+),"at_ms":([%d.]+)}') do
  reqs[#reqs + 1] = { account = tonumber(a), status = tonumber(st), at_ms = tonumber(at) }
end
f:close()
local first, late, worst = {}, 0, 0
for _, r in ipairs(reqs) do
  if r.account >= 0 then
    first[r.account] = first[r.account] or r.at_ms
    if r.status == 429 and r.at_ms - first[r.account] > 1000 then late = late + 1 end
  end
end
local by = {}
for _, r in ipairs(reqs) do
  if r.account >= 0 then by[r.account] = by[r.account] or {}; table.insert(by[r.account], r.at_ms) end
end
for _, list in pairs(by) do
  table.sort(list)
  local j = 1
  for i = 1, #list do
    while list[i] - list[j] >= 1000 do j = j + 1 end
    if i - j + 1 > worst then worst = i - j + 1 end
  end
end
print(("late_429s=%d max_per_account_second=%d"):format(late, worst))
print(("emulator_cpu_s=%.1f serve_cpu_s=%.1f"):format(cpu_s(emu_pid), cpu_s(srv_pid)))
os.execute("kill -TERM " .. srv_pid .. " " .. emu_pid)
