-- `make bench`: the retention soak.  N events through one `serve` to the
-- emulator (rate limit off) with retention set short, in four quarters;
-- after each quarter is final, events.db's size and that quarter's delivery
-- rate.  With retention working the size plateaus instead of growing with N.
--
--   lua5.4 scripts/bench/soak.lua WORKDIR CORPUS N KEEP
--
-- CORPUS: scripts/bench/corpus.lua's events (at least N lines); KEEP: the
-- window for --keep-delivered and --keep-dead (e.g. 10s).  Prints
-- key=value lines (q1..q4: size_mb, wal_mb, eps, pruned).
local W, CORPUS, N, KEEP = arg[1], arg[2], tonumber(arg[3]), arg[4] or "10s"
local PER_POST = 250            -- ~1 KB events: well under intake's 512 KiB per request

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

local state = W .. "/soak-state"
os.execute("rm -rf " .. state)
local emu_pid, emu_port = start("build/ac-emulator --port 0 --rate-limit 0", W .. "/soak-emu.out")
local BIN = os.getenv("BENCH_SOAK_BIN") or "build/blueprint"
local srv_pid, srv_port = start(BIN .. " serve --port 0 --state " .. state .. " --rate-limit 1000000"
  .. (KEEP == "none" and "" or (" --keep-delivered " .. KEEP .. " --keep-dead " .. KEEP)), W .. "/soak-serve.out")
local base = "http://127.0.0.1:" .. srv_port
local function stop() os.execute("kill " .. srv_pid .. " " .. emu_pid .. " 2>/dev/null") end
local token = sh("build/blueprint token --role admin --state " .. state):match("%S+")
local emu = "http://127.0.0.1:" .. emu_port
write(W .. "/soak-install.json", ('{"name":"soak","config":{"api_url":"%s","api_key":"emulator-api-token",'
  .. '"event_tracking_account_id":"1000001","event_tracking_key":"emulator-event-key","event_tracking_url":"%s/event"}}')
  :format(emu, emu))
local id = sh("curl -s -H 'Authorization: Bearer " .. token .. "' --data-binary @" .. W .. "/soak-install.json "
  .. base .. "/v1/admin/integration-catalog/activecampaign/install"):match('"id":"([^"]+)"')
if not id then stop(); error("install failed") end

-- final outcomes so far and events taken in, from /metrics
local function counts()
  local text = sh("curl -s " .. base .. "/metrics")
  local final = 0
  for name, n in text:gmatch("\nblueprint_events_(%a[%a_]*)_total[^\n]* (%d+)") do
    if name == "delivered" or name == "dropped" or name == "error" or name == "dead_lettered" or name == "held" then
      final = final + tonumber(n)
    end
  end
  return final, tonumber(text:match("\nblueprint_events_in_total (%d+)")) or 0,
    tonumber(text:match("\nblueprint_events_pruned_total (%d+)")) or 0
end
local function size_mb(path) return (tonumber(sh("stat -c %s " .. path .. " 2>/dev/null")) or 0) / 1048576 end

-- post lines [from, to] of the corpus, PER_POST a request, through one curl
local corpus = assert(io.open(CORPUS))
local function post(count)
  local cfg, i = {}, 0
  while count > 0 do
    local lines = {}
    for _ = 1, math.min(PER_POST, count) do lines[#lines + 1] = assert(corpus:read("l"), "corpus too short") end
    count = count - #lines
    i = i + 1
    write(W .. "/soak-body" .. i, table.concat(lines, "\n"))
    cfg[#cfg + 1] = ('url = "%s/v1/integrations/%s/events"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\n'
      .. 'data-binary = "@%s/soak-body%d"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"'):format(base, id, token, W, i)
  end
  write(W .. "/soak-curl.cfg", table.concat(cfg, "\nnext\n") .. "\n")
  local codes = sh("curl -s -Z --parallel-max 4 -K " .. W .. "/soak-curl.cfg 2>/dev/null")
  for k = 1, i do os.remove(W .. "/soak-body" .. k) end
  local bad = 0
  for code in codes:gmatch("%d+") do if code ~= "202" then bad = bad + 1 end end
  return bad
end

local function soak()
print(("soak_events=%d keep=%s"):format(N, KEEP))
local quarter = N // 4
for q = 1, 4 do
  local t0 = now_ms()
  local f0 = counts()
  local bad = post(q == 4 and N - 3 * quarter or quarter)
  local final, taken, pruned
  repeat
    sleep(0.2)
    final, taken, pruned = counts()
  until final >= taken
  local secs = (now_ms() - t0) / 1000
  print(("q%d events=%d pct=%d size_mb=%.1f wal_mb=%.1f eps=%.0f pruned=%d rejected_posts=%d"):format(
    q, taken, q * 25, size_mb(state .. "/events.db"), size_mb(state .. "/events.db-wal"), (final - f0) / secs, pruned, bad))
  io.stdout:flush()
end
end
local ok, err = pcall(soak)
stop()
if not ok then error(err) end
