-- `blueprint serve` at scale and under abuse: many integrations over many
-- vendor accounts in one process, pacing per account, concurrent intake, a
-- failing state store, idle connections, oversized bodies, file modes, and
-- changes made while events are being delivered.  Loopback only, bounded in
-- count and time.  Tagged #cli and #serve: the ASan/UBSan build (leaks and
-- memory errors, reported when a server stops) and the ThreadSanitizer
-- build run these too.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

-- Under a sanitizer the server runs 3-10x slower on a shared 2-core
-- machine, and the emulator's clock sees requests bunched by more than the
-- pacing margin (30 ms): those runs check for memory errors, races and
-- every event delivered, not the vendor-side timing.
local TIMING = not os.getenv("BLUEPRINT_TEST_SANITIZER")

-- An emulator, a server and one integration on the emulator's default
-- account, stopped when the test ends.
local function one_integration(name, server_opts)
  local emu = S.start_emulator("--rate-limit 0")
  local srv = S.start_server(server_opts or {})
  finally(function() srv.stop(); emu.stop() end)
  local _, it = srv.call("POST", INSTALL, S.install_body(name, S.emulator_account(emu, 0)))
  return emu, srv, it
end

describe("serve at scale #cli #serve", function()
  it("delivers to 500 integrations over 50 accounts with one pace per account and a steady API", function()
    local emu = S.start_emulator("--accounts 50 --rate-limit 5")
    local srv = S.start_server({ rate = false })
    finally(function() srv.stop(); emu.stop() end)
    local calls = {}
    for i = 1, 10 do calls[#calls + 1] = { "POST", INSTALL, S.install_body("first-" .. i, S.emulator_account(emu, i % 50)) } end
    local first = S.many(srv, calls)
    local ids = {}
    for i = 1, 10 do assert.are.equal(201, first[i][1], "install " .. i); ids[i] = first[i][2].id end
    local threads_at_10 = srv.threads()
    calls = {}
    for i = 11, 500 do calls[#calls + 1] = { "POST", INSTALL, S.install_body("int-" .. i, S.emulator_account(emu, i % 50)) } end
    local rest = S.many(srv, calls)
    for k, r in ipairs(rest) do assert.are.equal(201, r[1], "install " .. (k + 10)); ids[k + 10] = r[2].id end
    assert.are.equal(threads_at_10, srv.threads(), "threads grew with integrations")

    -- two identifies per integration: 20 contact syncs per account, 4 s at 5/s
    calls = {}
    for i, id in ipairs(ids) do
      calls[#calls + 1] = { "POST", "/v1/integrations/" .. id .. "/events",
        S.identify(("u%d-a@example.com"):format(i), "a" .. i) .. "\n" .. S.identify(("u%d-b@example.com"):format(i), "b" .. i) }
    end
    local posted = S.many(srv, calls)
    for k, r in ipairs(posted) do assert.are.equal(202, r[1], "intake " .. k) end

    -- the API answers within 1 s throughout (curl gives up after 1 s: status 0)
    local slow = {}
    local done = S.eventually(function()
      for _, path in ipairs({ "/healthz", "/v1/admin/integrations/" .. ids[1] }) do
        local p = io.popen("curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H 'Authorization: Bearer "
          .. srv.token("viewer") .. "' " .. srv.url .. path)
        local st = tonumber(p:read("a"))
        p:close()
        if st ~= 200 then slow[#slow + 1] = path .. " -> " .. tostring(st) end
      end
      return #emu.contacts() == 1000
    end, 40)
    assert.are.same({}, slow)
    assert.is_truthy(done, "delivered " .. #emu.contacts() .. " of 1000 contacts")
    local worst, account, late, window = S.pacing_report(emu.requests())
    if TIMING then
      assert.is_true(worst <= 5, ("account %s received %d requests within one second: %s"):format(tostring(account),
        worst, window))
      assert.are.equal(0, #late, "429s after the first second")
    end
    assert.are.equal(threads_at_10, srv.threads(), "threads grew with traffic")
  end)

  it("paces two integrations on one account together to 5 requests/s", function()
    local emu = S.start_emulator("--accounts 2 --rate-limit 5")
    local srv = S.start_server({ rate = false })
    finally(function() srv.stop(); emu.stop() end)
    local acct = S.emulator_account(emu, 1)
    local _, a = srv.call("POST", INSTALL, S.install_body("A", acct))
    -- the same account written differently (trailing slash, capitals) is the same account
    local other = S.emulator_account(emu, 1)
    other.api_url = other.api_url:gsub("acct1", "ACCT1") .. "/"
    local _, b = srv.call("POST", INSTALL, S.install_body("B", other))
    local ev_a, ev_b = {}, {}
    for i = 1, 10 do
      ev_a[i] = S.identify(("pa%d@example.com"):format(i), "pa" .. i)
      ev_b[i] = S.identify(("pb%d@example.com"):format(i), "pb" .. i)
    end
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. a.id .. "/events", table.concat(ev_a, "\n"))))
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. b.id .. "/events", table.concat(ev_b, "\n"))))
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 20 end, 15), "not all delivered")
    local worst, _, late, window = S.pacing_report(emu.requests())
    if TIMING then
      assert.is_true(worst <= 5, worst .. " requests within one second on one account: " .. window)
      assert.are.equal(0, #late)
    end
  end)

  it("delivers all of 20 x 50 concurrent intake posts to one integration", function()
    -- one by one (--no-batch): intake's concurrency is the point, not how bulk imports drain
    local emu, srv, it = one_integration("busy", { rate = 1000, args = "--no-batch" })
    local calls = {}
    for i = 1, 1000 do
      calls[i] = { "POST", "/v1/integrations/" .. it.id .. "/events", S.identify(("c%04d@example.com"):format(i), "c" .. i) }
    end
    for k, r in ipairs(S.many(srv, calls, 20)) do assert.are.equal(202, r[1], "post " .. k) end
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1000 end, 30),
      "delivered " .. #emu.contacts() .. " of 1000")
    local _, shown = srv.call("GET", "/v1/admin/integrations/" .. it.id)
    assert.are.equal(1000, shown.delivery.delivered)
  end)

  it("judges every event when drops and deliveries alternate in one intake", function()
    local emu, srv, it = one_integration("mixed")
    local evs = {}
    for i = 1, 40 do
      evs[i] = ('{"type":"identify","messageId":"mx%d","traits":{"email":"mx%d@example.com"},'
        .. '"context":{"consent":{"marketing":%s}}}'):format(i, i, i % 2 == 0 and "true" or "false")
    end
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", table.concat(evs, "\n"))))
    local shown = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id)
      return b.delivery.delivered + b.delivery.dropped == 40 and b
    end, 10)
    assert.is_truthy(shown, "not every event was judged")
    assert.are.equal(20, shown.delivery.delivered)
    assert.are.equal(20, shown.delivery.dropped)
    assert.are.equal(20, #emu.contacts())
  end)

  it("reports a failing store, refuses intake with 503, and loses nothing once it recovers", function()
    local emu = S.start_emulator("--rate-limit 0")
    local state = S.tmpdir()
    local fault = state .. "/inject-store-fault"
    local srv = S.start_server({ state = state, env = "BLUEPRINT_FAULT_FILE=" .. fault })
    finally(function() srv.stop(); emu.stop() end)
    local _, it = srv.call("POST", INSTALL, S.install_body("flaky", S.emulator_account(emu, 0)))
    local intake = "/v1/integrations/" .. it.id .. "/events"
    S.write(fault, "")
    local st, body = srv.call("POST", intake, S.identify("refused@example.com", "refused"))
    assert.are.equal(503, st)
    assert.are.equal("STORE_UNAVAILABLE", body.error.code)
    local hs, health = srv.call("GET", "/healthz", nil, false)
    assert.are.equal(503, hs)
    assert.are.equal("unhealthy", health.status)
    assert.matches("injected fault", health.store.error, 1, true)
    os.remove(fault)
    -- accepted now; then the store fails while they are being delivered
    local evs = {}
    for i = 1, 40 do evs[i] = S.identify(("f%02d@example.com"):format(i), "f" .. i) end
    assert.are.equal(202, (srv.call("POST", intake, table.concat(evs, "\n"))))
    S.write(fault, "")
    assert.is_truthy(S.eventually(function()
      local _, _, m = srv.call("GET", "/metrics", nil, false)
      return m:match("blueprint_store_failing 1")
    end, 10), "the failure was not reported in /metrics")
    -- 40 identifies are a bulk import: which write fails first depends on where the batch is
    -- (its record, its "queued" answer, its events' outcomes); each says so in the log
    -- (the store's upkeep may be the first to fail and set the metric: poll for delivery's line)
    assert.is_truthy(S.eventually(function() return srv.logs():match('"msg":"state store: [^"]*not') end, 10),
      "no store failure in the log")
    os.remove(fault)
    assert.is_truthy(S.eventually(function()
      local _, shown = srv.call("GET", "/v1/admin/integrations/" .. it.id)
      return shown.delivery.delivered == 40
    end, 20), "not every accepted event was delivered after the store recovered")
    local emails = {}
    for _, c in ipairs(emu.contacts()) do emails[c.email] = true end
    for i = 1, 40 do assert.is_true(emails[("f%02d@example.com"):format(i)], "f" .. i .. " missing") end
    assert.is_nil(emails["refused@example.com"])
    assert.are.equal(200, (srv.call("GET", "/healthz", nil, false)))
    local _, live = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=delivered&limit=100")
    assert.are.equal(40, #live.events)
  end)

  it("shows events waiting for a retry in Live Events, then delivers them", function()
    local emu, srv, it = one_integration("retry")
    emu.faults({ fail_next = 1, status = 503, retry_after = 2 })
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("later@example.com", "later"))
    local waiting = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=retrying")
      return #b.events == 1 and b.events[1]
    end, 5)
    assert.is_truthy(waiting, "no retrying event shown")
    assert.are.equal("retrying", waiting.state)
    assert.are.equal("retrying", waiting.outcome.outcome)
    assert.are.equal(1, waiting.outcome.attempts)
    assert.are.equal(503, waiting.outcome.status)
    assert.is_true(waiting.outcome.next_attempt_at > waiting.updated_at)
    assert.is_truthy(S.eventually(function() return #emu.contacts() == 1 end, 10))
    -- the outcome is saved within 10 ms of the answer
    local done = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events")
      return b.events[1].outcome.outcome == "delivered" and b
    end, 5)
    assert.is_truthy(done, "the delivered outcome was not recorded")
    assert.are.equal("delivered", done.events[1].state)
  end)

  it("names the host and api_url in a dead letter for a network error", function()
    local srv = S.start_server({})
    finally(function() srv.stop() end)
    local _, it = srv.call("POST", INSTALL, S.install_body("nowhere", {
      api_url = "http://127.0.0.1:9", api_key = "k" }))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("x@example.com", "x"))
    local dl = S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/dead-letters")
      return #b.dead_letters == 1 and b.dead_letters[1]
    end, 15)
    assert.is_truthy(dl, "no dead letter")
    assert.matches("host 127.0.0.1:9", dl.outcome.reason, 1, true)
    assert.matches("api_url", dl.outcome.reason, 1, true)
  end)
end)

describe("serve under abuse #cli #serve", function()
  local srv, emu
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    srv = S.start_server({})
  end)
  after_each(function() srv.stop(); emu.stop() end)

  it("answers /healthz within 1 s with 600 idle connections open", function()
    local ready = os.tmpname()
    os.execute("bash -c 'ulimit -n 4096; fds=(); for i in $(seq 600); do exec {fd}<>/dev/tcp/127.0.0.1/" .. srv.port
      .. " || exit 1; fds+=($fd); done; echo ok > " .. ready .. "; sleep 8' >/dev/null 2>&1 &")
    assert.is_truthy(S.eventually(function()
      local f = io.open(ready); local t = f and f:read("a"); if f then f:close() end
      return t and t:match("ok")
    end, 10), "could not open 600 connections")
    local p = io.popen("curl -s -o /dev/null -w '%{http_code}' --max-time 1 " .. srv.url .. "/healthz")
    local st = tonumber(p:read("a"))
    p:close()
    assert.are.equal(200, st)
    os.remove(ready)
  end)

  it("refuses oversized admin bodies with 413 before applying anything, split bodies too", function()
    local _, it = srv.call("POST", INSTALL, S.install_body("big", S.emulator_account(emu, 0)))
    local ten_mb = '{"config":{"api_url":"' .. string.rep("a", 10 * 1024 * 1024) .. '"}}'
    local st, body = srv.call("PATCH", "/v1/admin/integrations/" .. it.id, ten_mb)
    assert.are.equal(413, st)
    assert.are.equal("PAYLOAD_TOO_LARGE", body.error.code)
    assert.are.equal(413, (srv.call("POST", INSTALL, ten_mb)))
    assert.are.equal(413, (srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay", ten_mb)))
    -- chunked, no length announced, the last piece arriving later
    local out = os.tmpname()
    local head = "PATCH /v1/admin/integrations/" .. it.id .. " HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer "
      .. srv.token("admin") .. "\\r\\nContent-Type: application/json\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
    local piece = string.rep("b", 70000)
    local script = os.tmpname()
    S.write(script, "exec 3<>/dev/tcp/127.0.0.1/" .. srv.port .. "\n"
      .. "printf '" .. head .. "' >&3\n"
      .. "printf '%x\\r\\n{\"config\":{\"api_url\":\"" .. piece .. "\\r\\n' " .. (#piece + 22) .. " >&3\n"
      .. "sleep 0.3\n"
      .. "printf '3\\r\\n\"}}\\r\\n0\\r\\n\\r\\n' >&3\n"
      .. "timeout 5 head -1 <&3 > " .. out .. "\n")
    os.execute("bash " .. script)
    local status_line = io.open(out):read("a")
    os.remove(out); os.remove(script)
    assert.matches("HTTP/1.1 413", status_line, 1, true)
    local _, revs = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/revisions")
    assert.are.equal(1, #revs.revisions)
  end)

  it("answers 405 with Allow for a wrong method and serves HEAD where GET works", function()
    local p = io.popen("curl -s -D - -o /dev/null -X PUT " .. srv.url .. "/healthz")
    local headers = p:read("a")
    p:close()
    assert.matches("HTTP/1.1 405", headers, 1, true)
    assert.matches("Allow: GET, HEAD", headers, 1, true)
    p = io.popen("curl -s -I " .. srv.url .. "/healthz")
    headers = p:read("a")
    p:close()
    assert.matches("HTTP/1.1 200", headers, 1, true)
  end)

  it("keeps every file of the state directory owner-only, and forgets a deleted integration's secrets", function()
    local secret = "ak-delete-me-" .. os.time()
    local acct = S.emulator_account(emu, 0)
    acct.api_key = secret
    local _, it = srv.call("POST", INSTALL, S.install_body("modes", acct))
    srv.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("m@example.com", "m1"))
    S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events")
      return #b.events == 1
    end)
    local p = io.popen("find " .. srv.state .. " -printf '%m %y %p\\n'")
    local listing = p:read("a")
    p:close()
    local files = 0
    for mode, kind, path in listing:gmatch("(%d+) (%a) ([^\n]+)") do
      if kind == "d" then assert.are.equal("700", mode, path) else assert.are.equal("600", mode, path); files = files + 1 end
    end
    assert.is_true(files >= 4, listing)
    if S.sh("id -u") == "0\n" and select(3, S.sh("id nobody")) == 0 and select(3, S.sh("command -v runuser")) == 0 then
      local _, _, code = S.sh("runuser -u nobody -- cat " .. srv.state .. "/server.db-wal")
      assert.are_not.equal(0, code, "another user could read the WAL")
    end
    assert.are.equal(204, (srv.call("DELETE", "/v1/admin/integrations/" .. it.id)))
    srv.stop()
    local _, _, code = S.sh("grep -rl -- " .. secret .. " " .. srv.state)
    assert.are_not.equal(0, code, "the deleted integration's API key is still in the state directory")
  end)
end)

describe("serve: changes while events are being delivered #cli #serve", function()
  it("deletes integrations in the middle of their deliveries and goes on with the others", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({ rate = 200 })
    finally(function() srv.stop(); emu.stop() end)
    local ids = {}
    for i = 1, 18 do
      local _, it = srv.call("POST", INSTALL, S.install_body("del-" .. i, S.emulator_account(emu, 0)))
      ids[i] = it.id
    end
    for round = 1, 3 do
      for i, id in ipairs(ids) do
        if id then
          local evs = {}
          for k = 1, 15 do evs[k] = S.identify(("r%d-%d-%d@example.com"):format(round, i, k), ("r%d-%d-%d"):format(round, i, k)) end
          srv.call("POST", "/v1/integrations/" .. id .. "/events", table.concat(evs, "\n"))
        end
      end
      -- change, then delete, a third of them while their events are going out
      for i = round, #ids, 3 do
        if ids[i] then
          assert.are.equal(200, (srv.call("PATCH", "/v1/admin/integrations/" .. ids[i],
            '{"events":{"Webinar Registered":{"enabled":true}}}')))
          assert.are.equal(204, (srv.call("DELETE", "/v1/admin/integrations/" .. ids[i])))
          ids[i] = false
        end
      end
    end
    local _, keep = srv.call("POST", INSTALL, S.install_body("after", S.emulator_account(emu, 0)))
    srv.call("POST", "/v1/integrations/" .. keep.id .. "/events", S.identify("after@example.com", "after"))
    assert.is_truthy(S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. keep.id)
      return b.delivery.delivered == 1
    end, 10), "the server stopped delivering after the deletes")
    local _, list = srv.call("GET", "/v1/admin/integrations")
    assert.are.equal(1, #list.integrations)
    assert.are.equal(200, (srv.call("GET", "/healthz", nil, false)))
  end)

  it("sends each event once while dead letters are replayed over and over during a backlog", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({ rate = 40 })
    finally(function() srv.stop(); emu.stop() end)
    local _, it = srv.call("POST", INSTALL, S.install_body("replays", S.emulator_account(emu, 0)))
    emu.faults({ fail_next = 8, status = 404 })   -- the first 8 become dead letters
    local evs = {}
    for i = 1, 120 do evs[i] = S.identify(("rp%03d@example.com"):format(i), "rp" .. i) end
    assert.are.equal(202, (srv.call("POST", "/v1/integrations/" .. it.id .. "/events", table.concat(evs, "\n"))))
    for _ = 1, 25 do
      srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay", '{"all":true}')
      S.sleep(0.07)
    end
    assert.is_truthy(S.eventually(function()
      srv.call("POST", "/v1/admin/integrations/" .. it.id .. "/dead-letters/replay", '{"all":true}')
      return #emu.contacts() == 120
    end, 20), "not every event was delivered: " .. #emu.contacts())
    S.sleep(0.5)
    local synced = {}
    for _, r in ipairs(emu.requests()) do
      local email = r.body:match('"email":"([^"]+)"')   -- not on the Event Tracking checks (GET, no body)
      if email and (r.status == 200 or r.status == 201) then
        synced[email] = (synced[email] or 0) + 1
      end
    end
    local twice = {}
    for email, n in pairs(synced) do if n > 1 then twice[#twice + 1] = email end end
    assert.are.same({}, twice)
  end)

  it("releases every held event when the credentials are fixed while events keep arriving", function()
    local emu = S.start_emulator("--rate-limit 0")
    local srv = S.start_server({ rate = 200 })
    finally(function() srv.stop(); emu.stop() end)
    local acct = S.emulator_account(emu, 0)
    acct.api_key = "wrong-key"
    local _, it = srv.call("POST", INSTALL, S.install_body("creds", acct))
    local intake = "/v1/integrations/" .. it.id .. "/events"
    local n = 0
    local function post(count)
      local evs = {}
      for _ = 1, count do n = n + 1; evs[#evs + 1] = S.identify(("cr%03d@example.com"):format(n), "cr" .. n) end
      srv.call("POST", intake, table.concat(evs, "\n"))
    end
    post(20)
    assert.is_truthy(S.eventually(function()
      local _, b = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=held")
      return #b.events > 0
    end, 10), "the integration did not pause on the wrong key")
    -- fix the key between two posts, and go on posting right after it
    post(5)
    srv.call("PATCH", "/v1/admin/integrations/" .. it.id, '{"config":{"api_key":"' .. S.EMU_TOKEN .. '"}}')
    for _ = 1, 5 do post(3) end
    assert.is_truthy(S.eventually(function() return #emu.contacts() == n end, 20),
      ("%d of %d events delivered after the key was fixed"):format(#emu.contacts(), n))
    local _, held = srv.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events?outcome=held")
    assert.are.equal(0, #held.events)
  end)
end)
