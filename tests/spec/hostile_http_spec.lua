-- A hostile editor and a hostile network against `serve` (docs/serve.md, How it runs):
-- editor dry-runs, fixture runs and save checks run in a bounded pool off
-- the HTTP threads (a stalling mapping never slows /healthz, a full queue
-- answers 503 EDITOR_BUSY, a save's blueprint code holds no lock that other
-- requests need); the token is checked before any body byte is read; and a
-- request that takes longer than --request-time-limit to arrive is cut off,
-- however steadily it trickles in.  Raw connections are made with bash's
-- /dev/tcp (loopback only).
local S = require("support")
local core = S.core

local EDITOR = "/v1/admin/blueprints/activecampaign"
-- Under a sanitizer everything runs 3-10x slower on a shared 2-core
-- machine: the latency bounds get that slack (the stalls they catch were
-- of several seconds before the fix).
local SLACK = os.getenv("BLUEPRINT_TEST_SANITIZER") and 3 or 1

local function page_event(id)
  return '{"type":"page","messageId":"' .. id .. '","context":{"traits":{"email":"ed@example.com"},'
    .. '"consent":{"marketing":true}}}'
end

-- A dry-run body whose page mapping never returns: each event runs until
-- the instruction or time budget ends it.  (Under ThreadSanitizer the
-- budget's hook does not interrupt such a loop: there a long loop that ends
-- by itself stands in for it; the pool's code paths are the same.)
local LOOP = os.getenv("BLUEPRINT_TEST_SANITIZER") and "for i = 1, 10000000 do end" or "while true do end"
local function stalling_dry_run(events)
  local list = {}
  for i = 1, events do list[i] = page_event("stall-" .. i) end
  return '{"files":{"page.lua":"return function(event, ctx)\\n  ' .. LOOP .. '\\nend\\n"},"events":['
    .. table.concat(list, ",") .. "]}"
end

-- Start a request in the background (curl); returns a handle whose done()
-- is the status once it has answered, and body() its decoded body.
local function background(srv, method, path, body, token)
  local f = os.tmpname()
  S.write(f .. ".in", body or "")
  os.execute("(curl -s -m 120 -o " .. f .. ".out -w '%{http_code}' -X " .. method
    .. " -H 'Authorization: Bearer " .. token .. "' -H 'Content-Type: application/json' --data-binary @" .. f .. ".in '"
    .. srv.url .. path .. "' > " .. f .. ".tmp; mv " .. f .. ".tmp " .. f .. ".code) &")
  local h = {}
  function h.done()
    local fh = io.open(f .. ".code")
    if not fh then return nil end
    local status = tonumber(fh:read("a"))
    fh:close()
    return status
  end
  function h.body()
    local fh = io.open(f .. ".out")
    local text = fh and fh:read("a") or ""
    if fh then fh:close() end
    return core.json_decode(text) or text
  end
  function h.clean() for _, x in ipairs({ "", ".in", ".out", ".code" }) do os.remove(f .. x) end end
  return h
end

-- status and seconds of one request
local function timed(srv, method, path, body, token)
  local f = os.tmpname()
  S.write(f, body or "")
  local auth = token and (" -H 'Authorization: Bearer " .. token .. "'") or ""
  local p = io.popen("curl -s -m 60 -o /dev/null -w '%{http_code} %{time_total}' -X " .. method .. auth
    .. (body and (" -H 'Content-Type: application/json' --data-binary @" .. f) or "") .. " '" .. srv.url .. path .. "'")
  local status, secs = p:read("a"):match("(%d+) ([%d.]+)")
  p:close()
  os.remove(f)
  return tonumber(status), tonumber(secs)
end

local function rss_kb(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  local text = f:read("a")
  f:close()
  return tonumber(text:match("VmRSS:%s+(%d+)"))
end

-- Run a bash script (raw /dev/tcp talk) and return its output.
local function bash(script)
  local f = os.tmpname()
  S.write(f, script)
  local p = io.popen("bash " .. f .. " 2>/dev/null")
  local out = p:read("a")
  p:close()
  os.remove(f)
  return out
end

describe("hostile editor: the editor pool #serve", function()
  local srv
  after_each(function() if srv then srv.stop() end end)

  it("eight dry-runs of a stalling mapping never slow /healthz, and all of them answer", function()
    srv = S.start_server({ args = "--editor-workers 2 --editor-queue 8" })
    local editor = srv.token("editor")
    local runs = {}
    for i = 1, 8 do runs[i] = background(srv, "POST", EDITOR .. "/dry-run", stalling_dry_run(8), editor) end
    local polls, worst, all = 0, 0, false
    for _ = 1, 600 do
      all = true
      for i = 1, 8 do if not runs[i].done() then all = false end end
      if all then break end
      local st, secs = timed(srv, "GET", "/healthz")
      assert.are.equal(200, st)
      polls = polls + 1
      worst = math.max(worst, secs)
      -- the console's reads are not held up either
      st, secs = timed(srv, "GET", "/v1/admin/integrations", nil, editor)
      assert.are.equal(200, st)
      worst = math.max(worst, secs)
    end
    assert.is_true(all, "every dry-run answers")
    assert.is_true(worst < 1.0 * SLACK, ("/healthz took %.2f s while dry-runs ran"):format(worst))
    assert.is_true(polls >= 3, "polled while the dry-runs ran (" .. polls .. " polls)")
    for i = 1, 8 do
      assert.are.equal(200, runs[i].done())
      local body = runs[i].body()
      assert.are.equal(8, #body.results)
      assert.are.equal("error", body.results[1].outcome)
      runs[i].clean()
    end
  end)

  it("answers 503 EDITOR_BUSY when the queue is full, and the others still run", function()
    srv = S.start_server({ args = "--editor-workers 1 --editor-queue 1" })
    local editor = srv.token("editor")
    local runs = {}
    for i = 1, 5 do runs[i] = background(srv, "POST", EDITOR .. "/dry-run", stalling_dry_run(4), editor) end
    assert.is_truthy(S.eventually(function()
      for i = 1, 5 do if not runs[i].done() then return false end end
      return true
    end, 120), "every dry-run answers")
    local ok, busy = 0, 0
    for i = 1, 5 do
      local st, body = runs[i].done(), runs[i].body()
      if st == 503 then
        busy = busy + 1
        assert.are.equal("EDITOR_BUSY", body.error.code)
        assert.matches("retry", body.error.message)
      else
        assert.are.equal(200, st)
        ok = ok + 1
      end
      runs[i].clean()
    end
    assert.is_true(busy >= 1, "a full queue answers 503")
    assert.is_true(ok >= 2, "the running and the queued dry-run answer")
    local logs = srv.logs()
    assert.matches('"status":503', logs, 1, true)
  end)

  it("a save whose top-level code stalls holds no lock: a sign-in meanwhile answers at once", function()
    srv = S.start_server({ args = "--editor-workers 2 --editor-queue 8" })
    local editor = srv.token("editor")
    -- top-level code that stalls (C time the instruction count does not
    -- see, or the budget cuts it short), then fails the check: 422
    local hostile = '{"files":{"page.lua":"local s = string.rep(\\"\\", 1 << 29)\\nerror(\\"stalled on purpose\\")\\n'
      .. 'return function(event, ctx) end\\n"},"message":"stall"}'
    local saves = {}
    for i = 1, 2 do saves[i] = background(srv, "PUT", EDITOR .. "/files", hostile, editor) end
    -- a sign-in link exchanged while the saves' code runs (the sign-in takes the admin lock)
    local worst, tries = 0, 0
    while tries < 3 and not (saves[1].done() and saves[2].done()) do
      tries = tries + 1
      local body = core.json_encode({ token = srv.token("admin", "5m", "--sign-in") })
      local st, secs = timed(srv, "POST", "/v1/console/session", body)
      assert.are.equal(200, st)
      worst = math.max(worst, secs)
    end
    assert.is_truthy(S.eventually(function() return saves[1].done() and saves[2].done() end, 120))
    assert.is_true(worst < 1.0 * SLACK, ("a sign-in took %.2f s while a hostile save ran"):format(worst))
    for i = 1, 2 do
      assert.are.equal(422, saves[i].done())
      assert.are.equal("INVALID_BLUEPRINT", saves[i].body().error.code)
      saves[i].clean()
    end
    -- nothing was written: the running blueprint is the one on disk
    local st, files = srv.call("GET", EDITOR .. "/files", nil, editor)
    assert.are.equal(200, st)
    assert.are.equal(files.revision, files.on_disk)
  end)
end)

describe("hostile network: auth before bodies, a total time per request #serve", function()
  local srv
  after_each(function() if srv then srv.stop() end end)

  it("answers an unauthenticated POST at once, without waiting for its announced body", function()
    srv = S.start_server()
    local out = bash(([[
      exec 3<>/dev/tcp/127.0.0.1/%s
      printf 'PUT %s/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"files":' >&3
      start=$(date +%%s%%N)
      head -n 1 <&3 | tr -d '\r'
      echo "ms $(( ($(date +%%s%%N) - start) / 1000000 ))"
    ]]):format(srv.port, EDITOR))
    assert.matches("^HTTP/1.1 401", out)
    local ms = tonumber(out:match("ms (%d+)"))
    assert.is_true(ms < 2000 * SLACK, "the 401 came after " .. ms .. " ms")
    -- a wrong token, the same
    out = bash(([[
      exec 3<>/dev/tcp/127.0.0.1/%s
      printf 'POST /v1/integrations/nope/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not.a.token\r\nContent-Length: 500000\r\n\r\n[' >&3
      head -n 1 <&3 | tr -d '\r'
    ]]):format(srv.port))
    assert.matches("^HTTP/1.1 401", out)
  end)

  it("does not buffer the bodies of unauthenticated requests: memory stays flat", function()
    srv = S.start_server()
    local before = rss_kb(srv.pid)
    -- 40 connections each announcing and sending all but the last byte of 1 MiB
    local out = bash(([[
      trap '' PIPE
      dir=$(mktemp -d)
      for i in $(seq 1 40); do
        ( exec 3<>/dev/tcp/127.0.0.1/%s
          { printf 'PUT %s/files HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n'; head -c 1048575 /dev/zero; } >&3 2>/dev/null
          touch $dir/sent.$i
          sleep 4 ) &
      done
      for t in $(seq 1 200); do [ $(ls $dir | wc -l) -ge 40 ] && break; sleep 0.05; done
      grep VmRSS /proc/%s/status
      wait
      rm -rf $dir
    ]]):format(srv.port, EDITOR, srv.pid))
    local during = tonumber(out:match("VmRSS:%s+(%d+)"))
    assert.is_truthy(during, out)
    local grown = (during - before) / 1024
    assert.is_true(grown < 16, ("RSS grew %.1f MB with 40 unauthenticated 1 MiB bodies"):format(grown))
    assert.are.equal(200, (timed(srv, "GET", "/healthz")))
  end)

  it("cuts off a request whose headers trickle in steadily past --request-time-limit", function()
    srv = S.start_server({ args = "--request-time-limit 2" })
    -- one header line every 0.4 s: never idle, never complete
    local out = bash(([[
      trap '' PIPE
      exec 3<>/dev/tcp/127.0.0.1/%s
      start=$(date +%%s%%N)
      printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n' >&3
      cut=no
      for i in $(seq 1 50); do
        sleep 0.4
        printf 'X-Slow-%%d: 1\r\n' $i >&3 2>/dev/null || { cut=yes; break; }
      done
      echo "cut $cut ms $(( ($(date +%%s%%N) - start) / 1000000 ))"
    ]]):format(srv.port))
    assert.matches("cut yes", out)
    local ms = tonumber(out:match("ms (%d+)"))
    assert.is_true(ms >= 1500 and ms < 8000 * SLACK, "cut off after " .. ms .. " ms (limit 2 s)")
    -- a body that trickles in: the same
    out = bash(([[
      trap '' PIPE
      exec 3<>/dev/tcp/127.0.0.1/%s
      start=$(date +%%s%%N)
      printf 'POST /v1/console/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n' >&3
      cut=no
      for i in $(seq 1 50); do
        sleep 0.4
        printf ' ' >&3 2>/dev/null || { cut=yes; break; }
      done
      echo "cut $cut ms $(( ($(date +%%s%%N) - start) / 1000000 ))"
    ]]):format(srv.port))
    assert.matches("cut yes", out)
    ms = tonumber(out:match("ms (%d+)"))
    assert.is_true(ms < 8000 * SLACK, "cut off after " .. ms .. " ms (limit 2 s)")
    -- ordinary requests are unaffected
    assert.are.equal(200, (timed(srv, "GET", "/healthz")))
    assert.matches("request time limit", srv.logs(), 1, true)
  end)
end)
