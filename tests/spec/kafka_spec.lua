-- Cluster mode: three `serve --kafka` nodes against librdkafka's mock
-- cluster (3 brokers on loopback, build/kafka-mock-cluster) and the
-- emulator.  One cluster for the whole file, in order: what one test leaves
-- (integrations, delivered events) the next one builds on.  Group timing
-- is the mock's: the first join takes ~3 s, and a dead member's partitions
-- move after the session timeout these nodes use (6 s).  Tagged #kafka: run
-- by its own suite (ASan/UBSan build), not with the other specs.
local S = require("support")
local core = S.core

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"
local TIMING = not os.getenv("BLUEPRINT_TEST_SANITIZER")
local ACCOUNTS = 20

local kafka, emu, keyfile, env
local nodes = {}

-- One by one (--no-batch): these tests count each event's contact sync at
-- the emulator; a backlog of 10 identifies of an account would be a bulk
-- import (batch_cluster_spec covers batches in cluster mode).
local function start_node(i, state)
  nodes[i] = S.start_server({
    state = state or S.tmpdir(), rate = false, retry_base_ms = 200, env = env, start_seconds = 60,
    args = "--no-batch --kafka " .. kafka.brokers .. " --kafka-session-timeout-ms 6000 --node node" .. i,
  })
  return nodes[i]
end

local function get(node, path)
  local st, body = node.call("GET", path)
  return st == 200 and body or nil, st
end

-- Successful /api/3/contact/sync requests at the emulator, per email.
local function syncs_by_email()
  local seen = {}
  for _, r in ipairs(emu.requests()) do
    local email = r.path == "/api/3/contact/sync" and r.status < 300 and r.body:match('"email":"([^"]+)"')
    if email then seen[email] = (seen[email] or 0) + 1 end
  end
  return seen
end

local function delivered(emails)
  local seen = syncs_by_email()
  local n = 0
  for _, e in ipairs(emails) do if seen[e] then n = n + 1 end end
  return n == #emails and n, n
end

-- A node's log lines about Kafka (for failure messages).
local function kafka_log(node)
  local t = {}
  for line in node.logs():gmatch("[^\n]+") do
    if line:find('"msg":"kafka', 1, true) or line:find("librdkafka", 1, true) then t[#t + 1] = line end
  end
  return table.concat(t, "\n", math.max(1, #t - 40))
end

local function assigned(node)
  local st, h = node.call("GET", "/healthz")
  if st ~= 200 and st ~= 503 then return 0 end
  return #h.kafka.assigned_partitions
end

describe("cluster mode on Kafka #kafka", function()
  local ids = {}   -- integration id per emulator account (0 .. ACCOUNTS)

  lazy_setup(function()
    kafka = S.start_kafka()
    emu = S.start_emulator("--accounts " .. (ACCOUNTS + 1) .. " --rate-limit 5")
    env, keyfile = S.cluster_env()
    for i = 1, 3 do start_node(i) end
  end)

  -- every node is stopped; then a sanitizer report in any log fails the file
  lazy_teardown(function() S.stop_cluster(nodes, emu, kafka, keyfile) end)

  it("installs through node 1, takes events through node 2 and shows the delivery in node 3's Live Events", function()
    local st, it = nodes[1].call("POST", INSTALL, S.install_body("shop", S.emulator_account(emu, 0)))
    assert.are.equal(201, st, nodes[1].bodies[#nodes[1].bodies])
    ids[0] = it.id
    -- node 1 has it when it answers; the others within a second (polled: the mock's pace)
    assert.are.equal(1, get(nodes[1], "/v1/admin/integrations/" .. it.id).revision)
    for i = 2, 3 do
      assert.is_truthy(S.eventually(function() return get(nodes[i], "/v1/admin/integrations/" .. it.id) end, 5),
        "node " .. i .. " does not have the integration")
    end
    -- secrets travel sealed: the topic record on disk of node 3 holds no API key
    local _, shown = nodes[3].call("GET", "/v1/admin/integrations/" .. it.id)
    assert.are.equal("********", shown.config.api_key)

    st = nodes[2].call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("first@example.com", "first-1"))
    assert.are.equal(202, st, nodes[2].bodies[#nodes[2].bodies])
    local row = S.eventually(function()
      local live = get(nodes[3], "/v1/admin/integrations/" .. it.id .. "/live-events")
      for _, e in ipairs(live and live.events or {}) do
        if e.event.messageId == "first-1" and e.outcome.outcome == "delivered" then return e end
      end
    end, 30)
    assert.is_truthy(row, "node 3's Live Events never showed the delivery")
    assert.are.equal("delivered", row.state)
    assert.are.equal(1, syncs_by_email()["first@example.com"])
    -- and node 3's counters count it, wherever it was delivered
    assert.is_truthy(S.eventually(function()
      local b = get(nodes[3], "/v1/admin/integrations/" .. it.id)
      return b and b.delivery.delivered == 1
    end, 5))
    -- an update through node 3 is a new revision everywhere
    st = nodes[3].call("PATCH", "/v1/admin/integrations/" .. it.id, '{"events":{"Webinar Registered":{"enabled":true}}}')
    assert.are.equal(200, st)
    assert.is_truthy(S.eventually(function()
      local b = get(nodes[1], "/v1/admin/integrations/" .. it.id)
      return b and b.revision == 2
    end, 5), "node 1 did not see revision 2")
  end)

  -- before, each node kept its own record of the links taken: one link
  -- opened a session on every node, and a sign-out (had there been one)
  -- would have held on one node only
  it("takes a sign-in link once in the whole cluster, even at the same moment; a sign-out holds on every node", function()
    local dir = S.tmpdir()
    -- the same link at three nodes at once: one session
    local link = nodes[1].token("viewer", "10m", "--sign-in --subject racer")
    S.write(dir .. "/body", core.json_encode({ token = link }))
    local cmd = {}
    for i = 1, 3 do
      cmd[#cmd + 1] = ("curl -s -o %s/out%d -w '%%{http_code}' -X POST --data-binary @%s/body %s/v1/console/session > %s/st%d &")
        :format(dir, i, dir, nodes[i].url, dir, i)
    end
    os.execute(table.concat(cmd, " ") .. " wait")
    local won, session = {}, nil
    for i = 1, 3 do
      local st = tonumber(io.open(dir .. "/st" .. i):read("a"))
      local body = core.json_decode(io.open(dir .. "/out" .. i):read("a"))
      if st == 200 then won[#won + 1] = i; session = body.token
      else
        assert.are.equal(401, st, "node " .. i)
        assert.matches("used already", body.error.message, 1, true)
      end
    end
    assert.are.equal(1, #won, "sessions opened by one link: " .. #won)
    -- one after the other, on two nodes
    link = nodes[2].token("viewer", "10m", "--sign-in --subject walker")
    assert.are.equal(200, (nodes[2].call("POST", "/v1/console/session", core.json_encode({ token = link }), false)))
    local st, body = nodes[3].call("POST", "/v1/console/session", core.json_encode({ token = link }), false)
    assert.are.equal(401, st)
    assert.matches("used already", body.error.message, 1, true)
    -- signed out through another node than the one that opened it
    local other = won[1] % 3 + 1
    for i = 1, 3 do assert.are.equal(200, (nodes[i].call("GET", "/v1/console/me", nil, session)), "node " .. i) end
    assert.are.equal(204, (nodes[other].call("DELETE", "/v1/console/session", nil, session)))
    assert.are.equal(401, (nodes[other].call("GET", "/v1/console/me", nil, session)))
    for i = 1, 3 do
      assert.is_truthy(S.eventually(function() return nodes[i].call("GET", "/v1/console/me", nil, session) == 401 end, 5),
        "node " .. i .. " still takes the signed-out session")
    end
  end)

  it("paces 20 accounts over 3 nodes: no account above 5 requests in any second, every event delivered", function()
    local calls = {}
    for k = 1, ACCOUNTS do
      calls[k] = { "POST", INSTALL, S.install_body("acct-" .. k, S.emulator_account(emu, k)) }
    end
    -- installs through every node
    for k, call in ipairs(calls) do
      local st, it = nodes[(k % 3) + 1].call(call[1], call[2], call[3])
      assert.are.equal(201, st, "install " .. k)
      ids[k] = it.id
    end
    -- 10 identifies per account (2 s of its quota), posted through every node at once
    local emails = {}
    for round = 1, 10 do
      for k = 1, ACCOUNTS do
        local email = ("p%d-%d@example.com"):format(k, round)
        emails[#emails + 1] = email
        local node = nodes[((k + round) % 3) + 1]
        assert.is_truthy(S.eventually(function() return get(node, "/v1/admin/integrations/" .. ids[k]) end, 5))
        local st = node.call("POST", "/v1/integrations/" .. ids[k] .. "/events", S.identify(email, "p" .. k .. "-" .. round))
        assert.are.equal(202, st, node.bodies[#node.bodies])
      end
    end
    local ok, n = S.eventually(function() return delivered(emails) end, 90)
    assert.is_truthy(ok, ("delivered %s of %d"):format(tostring(n or select(2, delivered(emails))), #emails))
    local worst, account, late, window = S.pacing_report(emu.requests())
    if TIMING then
      assert.is_true(worst <= 5, ("account %s received %d requests within one second: %s"):format(tostring(account),
        worst, window))
      assert.are.equal(0, #late, "429s after the first second")
    end
    -- the work is spread: every node reads some partitions (once the group has settled)
    for i = 1, 3 do
      assert.is_truthy(S.eventually(function() return assigned(nodes[i]) > 0 end, 30),
        "node " .. i .. " reads no partition; its kafka log:\n" .. kafka_log(nodes[i]))
    end
    for _, e in ipairs(emails) do assert.are.equal(1, syncs_by_email()[e], e .. " synced more than once") end
  end)

  it("moves a killed node's partitions: every accepted event delivered, duplicates within the in-flight bound", function()
    -- a node that reads partitions (right after the previous test a rebalance may still be under way)
    local victim
    assert.is_truthy(S.eventually(function()
      for i = 1, 3 do if assigned(nodes[i]) > 0 then victim = i; return true end end
    end, 60), "no node reads any partition")
    local emails = {}
    for round = 1, 15 do
      for k = 1, ACCOUNTS do
        local email = ("k%d-%d@example.com"):format(k, round)
        emails[#emails + 1] = email
        local node = nodes[victim % 3 + 1]
        local st = node.call("POST", "/v1/integrations/" .. ids[k] .. "/events", S.identify(email, "k" .. k .. "-" .. round))
        assert.are.equal(202, st)
      end
    end
    -- mid-delivery (3 s of work per account at 5/s): kill it
    assert.is_truthy(S.eventually(function() return select(2, delivered(emails)) >= 60 end, 30))
    nodes[victim].kill()
    nodes[victim].stopped = true
    local ok = S.eventually(function() return delivered(emails) end, 120)
    local _, n = delivered(emails)
    assert.is_truthy(ok, ("delivered %d of %d after the kill"):format(n, #emails))
    local extra = 0
    for _, e in ipairs(emails) do extra = extra + (syncs_by_email()[e] - 1) end
    -- in flight at the kill: at most a request or two per account it served
    -- (5/s each), plus outcomes not yet acknowledged by the broker
    assert.is_true(extra <= 2 * ACCOUNTS, extra .. " duplicate deliveries")
    io.stderr:write(("# kill -9 of node %d: %d events, %d delivered twice\n"):format(victim, #emails, extra))

    -- the node comes back with an empty state directory: its configuration
    -- is rebuilt from the topic before it serves
    local node = start_node(victim)
    local list = get(node, "/v1/admin/integrations")
    assert.are.equal(ACCOUNTS + 1, #list.integrations)
    local _, shown = node.call("GET", "/v1/admin/integrations/" .. ids[0])
    assert.are.equal(2, shown.revision)
  end)

  it("answers 503 while no broker is reachable, loses nothing it accepted and resumes", function()
    local before = {}
    for k = 1, 5 do
      before[k] = ("b%d@example.com"):format(k)
      assert.are.equal(202, (nodes[2].call("POST", "/v1/integrations/" .. ids[k] .. "/events", S.identify(before[k], "b" .. k))))
    end
    kafka.down()
    local st, body = nodes[2].call("POST", "/v1/integrations/" .. ids[1] .. "/events", S.identify("never@example.com", "never"))
    assert.are.equal(503, st)
    assert.are.equal("CLUSTER_UNAVAILABLE", body.error.code)
    assert.matches("nothing was accepted", body.error.message)
    assert.is_truthy(S.eventually(function()
      local hst, h = nodes[2].call("GET", "/healthz")
      return hst == 503 and h.kafka.ok == false
    end, 15), "healthz did not report the brokers away")
    kafka.up()
    local after = ("a1@example.com")
    assert.is_truthy(S.eventually(function()
      return nodes[1].call("POST", "/v1/integrations/" .. ids[1] .. "/events", S.identify(after, "a1")) == 202
    end, 60), "intake did not come back")
    before[#before + 1] = after
    assert.is_truthy(S.eventually(function() return delivered(before) end, 90),
      ("delivered %d of %d"):format(select(2, delivered(before)), #before))
    assert.is_nil(syncs_by_email()["never@example.com"])
    for i = 1, 3 do
      assert.is_truthy(S.eventually(function() return nodes[i].call("GET", "/healthz") == 200 end, 30), "node " .. i)
    end
  end)

  it("replays a dead letter through any node, and /metrics shows the whole cluster's outcomes", function()
    -- a permanent 4xx dead-letters at once: an event the emulator rejects
    emu.faults({ fail_next = 1, status = 422 })
    assert.are.equal(202, (nodes[1].call("POST", "/v1/integrations/" .. ids[0] .. "/events", S.identify("dl@example.com", "dl-1"))))
    local dead = S.eventually(function()
      local b = get(nodes[2], "/v1/admin/integrations/" .. ids[0] .. "/dead-letters")
      return b and #b.dead_letters > 0 and b
    end, 30)
    assert.is_truthy(dead, "node 2 never listed the dead letter")
    local st, r = nodes[2].call("POST", "/v1/admin/integrations/" .. ids[0] .. "/dead-letters/replay", '{"all":true}')
    assert.are.equal(200, st)
    assert.are.equal(1, r.replayed)
    assert.is_truthy(S.eventually(function() return syncs_by_email()["dl@example.com"] end, 30), "replay not delivered")
    -- gone from every node's dead letters
    assert.is_truthy(S.eventually(function()
      local b = get(nodes[3], "/v1/admin/integrations/" .. ids[0] .. "/dead-letters")
      return b and #b.dead_letters == 0
    end, 10))
    assert.is_truthy(S.eventually(function() return assigned(nodes[3]) > 0 end, 30), kafka_log(nodes[3]))
    local _, _, raw = nodes[3].call("GET", "/metrics")
    assert.matches("blueprint_kafka_up 1", raw)
    assert.matches("blueprint_kafka_consumer_lag{topic=", raw, nil, true)
    local total = tonumber(raw:match("blueprint_events_delivered_total (%d+)"))
    assert.is_true(total and total >= 1 + 10 * ACCOUNTS, "delivered_total " .. tostring(total))
  end)

  -- before, such a node loaded no integration, said so in its log only,
  -- answered /healthz 200 and refused every event with a 404
  it("a node started without the cluster's key file is not ready, names what it cannot open and answers intake 503", function()
    local loud = S.start_server({ state = S.tmpdir(), rate = false, start_seconds = 60,
      env = "BLUEPRINT_JWT_SECRET=kafka-spec-secret-at-least-32-bytes",
      args = "--kafka " .. kafka.brokers .. " --kafka-session-timeout-ms 6000 --node node-without-key" })
    finally(function() loud.stop() end)
    local function unopened()
      local st, h = loud.call("GET", "/healthz")
      local listed = {}
      for _, u in ipairs(type(h) == "table" and h.unopened or {}) do listed[u.integration] = u end
      return st, h, listed
    end
    local st, h, listed = unopened()
    assert.are.equal(503, st, core.json_encode(h))
    assert.are.equal("unhealthy", h.status)
    for k = 0, ACCOUNTS do assert.is_truthy(listed[ids[k]], "not named: " .. ids[k]) end
    assert.are.equal("secrets_do_not_decrypt", listed[ids[0]].reason)
    assert.matches("--master-key-file", listed[ids[0]].message, 1, true)
    local body
    st, body = loud.call("POST", "/v1/integrations/" .. ids[0] .. "/events", S.identify("loud@example.com", "loud-1"))
    assert.are.equal(503, st, core.json_encode(body))
    assert.are.equal("INTEGRATION_UNAVAILABLE", body.error.code)
    assert.matches("cannot decrypt the integration's secrets: start it with the key file they were sealed with (--master-key-file",
      body.error.message, 1, true)
    -- a record that settles it (here a deletion through another node) takes it off the list
    local it
    st, it = nodes[1].call("POST", INSTALL, S.install_body("loud", S.emulator_account(emu, 0)))
    assert.are.equal(201, st)
    assert.is_truthy(S.eventually(function() return select(3, unopened())[it.id] end, 5), "the new one not named")
    assert.are.equal(204, (nodes[1].call("DELETE", "/v1/admin/integrations/" .. it.id)))
    assert.is_truthy(S.eventually(function() return not select(3, unopened())[it.id] end, 5), "still named after its deletion")
    -- the nodes that have the key are ready
    for i = 1, 3 do assert.are.equal(200, (nodes[i].call("GET", "/healthz")), "node " .. i) end
  end)

  -- before, the first intake of a new integration waited for its topic to
  -- be found (20 at once after 20 installs: up to 6 s); now the install
  -- answers once the topic is ready.  Times are reported, not asserted.
  it("takes the first intake right after an install: 20 installs, then 20 first intakes at once, all accepted", function()
    local fresh, dir = {}, S.tmpdir()
    for k = 1, 20 do
      local st, it = nodes[1].call("POST", INSTALL, S.install_body("first-" .. k, S.emulator_account(emu, k)))
      assert.are.equal(201, st)
      fresh[k] = it.id
    end
    local token = nodes[1].token("admin")
    local cmd = {}
    for k = 1, 20 do
      S.write(dir .. "/b" .. k, S.identify(("first%d@example.com"):format(k), "first-intake-" .. k))
      cmd[#cmd + 1] = ("curl -s -o /dev/null -w '%%{http_code} %%{time_total}\\n' -X POST -H 'Authorization: Bearer %s' "
        .. "-H 'Content-Type: application/json' --data-binary @%s/b%d %s/v1/integrations/%s/events >> %s/times &")
        :format(token, dir, k, nodes[1].url, fresh[k], dir)
    end
    os.execute(table.concat(cmd, " ") .. " wait")
    local times = {}
    for line in io.lines(dir .. "/times") do
      local st, secs = line:match("^(%d+) ([%d.]+)$")
      assert.are.equal("202", st, line)
      times[#times + 1] = tonumber(secs)
    end
    assert.are.equal(20, #times)
    table.sort(times)
    io.stderr:write(("# 20 first intakes right after 20 installs: p50 %.3f s, max %.3f s\n"):format(times[10], times[20]))
  end)
end)

describe("cluster mode, one delivery topic per vendor #kafka", function()
  it("routes a vendor's integrations through delivery-activecampaign, keyed by account (seen with kcat)", function()
    local k = S.start_kafka()
    local e = S.start_emulator("--accounts 2 --rate-limit 0")
    local key = os.tmpname()
    local f = io.popen("openssl rand -hex 32")
    S.write(key, "kpv " .. f:read("l") .. "\n")
    f:close()
    local node = S.start_server({ env = "BLUEPRINT_JWT_SECRET=per-vendor-spec-secret-of-32-bytes BLUEPRINT_MASTER_KEY_FILE=" .. key, start_seconds = 60,
      args = "--kafka " .. k.brokers .. " --cluster pv --topic-mode per_vendor --kafka-session-timeout-ms 6000" })
    finally(function() node.stop(); e.stop(); k.stop(); os.remove(key) end)
    local ids = {}
    for acct = 0, 1 do
      local st, it = node.call("POST", INSTALL, S.install_body("pv-" .. acct, S.emulator_account(e, acct)))
      assert.are.equal(201, st)
      ids[acct] = it.id
      assert.are.equal(202, (node.call("POST", "/v1/integrations/" .. it.id .. "/events",
        S.identify(("pv%d@example.com"):format(acct), "pv" .. acct))))
    end
    assert.is_truthy(S.eventually(function() return #e.contacts() == 2 end, 30), "not delivered")
    local out = S.sh("kcat -b " .. k.brokers .. " -C -t delivery-activecampaign -e -q -f '%k|%h\\n'")
    local keys = {}
    for line in out:gmatch("[^\n]+") do keys[#keys + 1] = line end
    table.sort(keys)
    assert.are.equal(2, #keys, out)
    assert.matches("^activecampaign http://127%.0%.0%.1:" .. e.port .. "|integration_id=" .. ids[0], keys[1])
    assert.matches("^activecampaign http://acct1%.localhost:" .. e.port .. "|integration_id=" .. ids[1], keys[2])
    -- the configuration record carries sealed secrets only
    local config = S.sh("kcat -b " .. k.brokers .. " -C -t pv.integrations -e -q")
    assert.matches("bp:enc:v2:", config, nil, true)
    assert.is_nil(config:find(S.EMU_TOKEN .. "-1", 1, true))
    assert.is_nil(config:find(S.EMU_EVENT_KEY, 1, true))
  end)
end)

describe("cluster mode options #kafka", function()
  local SECRET_ENV = "BLUEPRINT_JWT_SECRET=options-spec-secret-of-32-bytes-or-more "

  -- before, a managed Kafka (TLS, SASL) could not be reached: nothing but
  -- the broker list reached librdkafka
  it("takes librdkafka's settings from --kafka-config: a bad line named with file:line, secrets never shown", function()
    local dir = S.tmpdir()
    local function serve(lines)
      S.write(dir .. "/kafka.properties", lines)
      return S.sh(SECRET_ENV .. S.bin .. " serve --port 0 --state " .. dir .. "/state --kafka 127.0.0.1:9 --kafka-config "
        .. dir .. "/kafka.properties")
    end
    local _, err, code = serve("# a managed Kafka\nsecurity.protocol = SASL_SSL\n\nsasl.pasword=hunter2-secret\n")
    assert.are.equal(1, code)
    assert.matches(dir .. '/kafka.properties:4: kafka setting sasl.pasword: No such configuration property: '
      .. '"sasl.pasword"', err, 1, true)
    assert.is_nil(err:find("hunter2", 1, true))
    _, err, code = serve("security.protocol=SASL_SSLX\n")
    assert.are.equal(1, code)
    assert.matches(dir .. '/kafka.properties:1: kafka setting security.protocol: Invalid value "SASL_SSLX"', err, 1, true)
    _, err, code = serve("client.id=x\njust-a-word\n")
    assert.are.equal(1, code)
    assert.matches(dir .. "/kafka.properties:2: expected key=value", err, 1, true)
    _, err, code = serve("acks=1\n")
    assert.are.equal(1, code)
    assert.matches("kafka.properties:1: acks is set by the node (202 after acks=all, never twice)", err, 1, true)
    -- valid settings reach the client librdkafka creates: TLS with a CA file
    -- that is not there fails there, and the password stays unsaid
    _, err, code = serve("security.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-512\nsasl.username=blueprint\n"
      .. "sasl.password=hunter2-secret\nssl.ca.location=" .. dir .. "/no-such-ca.pem\n")
    assert.are.equal(1, code)
    assert.matches("kafka, with the settings of " .. dir .. "/kafka.properties: ssl.ca.location failed", err, 1, true)
    assert.is_nil(err:find("hunter2", 1, true))
    -- it belongs to cluster mode
    _, err, code = S.sh(SECRET_ENV .. S.bin .. " serve --port 0 --state " .. dir .. "/state --kafka-config " .. dir
      .. "/kafka.properties")
    assert.are.equal(1, code)
    assert.matches("--kafka-config (librdkafka's settings) needs --kafka BROKERS", err, 1, true)
  end)

  it("runs a node with --kafka-config settings against the cluster", function()
    local k = S.start_kafka()
    local dir = S.tmpdir()
    local key = dir .. "/master.key"
    local f = io.popen("openssl rand -hex 32")
    S.write(key, "kcfg " .. f:read("l") .. "\n")
    f:close()
    S.write(dir .. "/kafka.properties", "client.id=kcfg-node\nsocket.keepalive.enable=true\nsasl.password=hunter2-secret\n"
      .. "security.protocol=plaintext\n")
    local node = S.start_server({ env = SECRET_ENV .. "BLUEPRINT_MASTER_KEY_FILE=" .. key, start_seconds = 60,
      args = "--kafka " .. k.brokers .. " --cluster kcfg --kafka-session-timeout-ms 6000 --kafka-config " .. dir
        .. "/kafka.properties" })
    finally(function() node.stop(); k.stop() end)
    local st, h = node.call("GET", "/healthz")
    assert.are.equal(200, st, node.logs())
    assert.is_true(h.kafka.ok)
    assert.is_nil(node.logs():find("hunter2", 1, true))
  end)

  it("refuses an unknown topic mode with the two it knows", function()
    local _, err, code = S.sh(S.bin .. " serve --port 0 --state " .. S.tmpdir() .. " --kafka 127.0.0.1:9 --topic-mode per_account")
    assert.are.equal(1, code)
    assert.matches("--topic-mode is per_integration (delivery-{integration_id}) or per_vendor (delivery-{vendor})", err,
      nil, true)
  end)
end)
