-- Cluster mode with batches (`serve --kafka … --batch`): a bulk import the
-- vendor queued for one node is handed over when that node dies.  Two nodes
-- against librdkafka's mock cluster (build/kafka-mock-cluster) and the
-- emulator, whose imports stay queued (--import-delay-ms 600000) until the
-- spec completes them.  The node that owns the account's partition sends
-- the batch and announces it on the outcomes topic; it is killed (SIGKILL)
-- while the import is queued; the other node takes the partition over,
-- asks the emulator for that import's status and delivers every event once,
-- importing nothing again.  Tagged #kafka: run by its own suite.
local S = require("support")

local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"
local EVENTS = 30

local function identifies(n, prefix)
  local t = {}
  for i = 1, n do
    t[i] = ('{"type":"identify","messageId":"%s%d","traits":{"email":"%s%d@example.com"},'
      .. '"context":{"consent":{"marketing":true}}}'):format(prefix, i, prefix, i)
  end
  return table.concat(t, "\n") .. "\n"
end

local function metric(node, name)
  local st, _, text = node.call("GET", "/metrics")
  return st == 200 and tonumber(text:match("\n" .. name .. " (%d+)")) or nil
end

-- Rows of a table in a node's store (read-only: the node keeps writing).
local function rows(state, sql)
  local f = io.popen(("sqlite3 -readonly %s/events.db %q 2>/dev/null"):format(state, sql))
  local out = f:read("a")
  f:close()
  return tonumber(out:match("%d+"))
end

describe("batches handed over in a rebalance #kafka", function()
  local kafka, emu, keyfile, env
  local nodes, states = {}, {}

  local function start_node(i)
    states[i] = states[i] or S.tmpdir()
    nodes[i] = S.start_server({
      state = states[i], env = env, start_seconds = 60, retry_base_ms = 200,
      args = "--batch --kafka " .. kafka.brokers .. " --kafka-session-timeout-ms 6000 --node node" .. i,
    })
    return nodes[i]
  end

  lazy_setup(function()
    kafka = S.start_kafka()
    emu = S.start_emulator("--rate-limit 0 --import-delay-ms 600000")
    env, keyfile = S.cluster_env()
    for i = 1, 2 do start_node(i) end
  end)

  lazy_teardown(function() S.stop_cluster(nodes, emu, kafka, keyfile) end)

  local it_id

  -- EVENTS identifies (messageIds and emails PREFIX1…) as one intake request
  -- (one Kafka message, one partition, one batch); once the import is queued
  -- and the other node has the batch, `lose(owner)` takes the owner away,
  -- and the other node must finish it.  Returns the node that did.
  local function hand_over(prefix, lose)
    local seen_ids = {}
    for _, r in ipairs(emu.requests()) do if r.batch_id ~= "" then seen_ids[r.batch_id] = true end end
    local via = nodes[1].stopped and nodes[2] or nodes[1]
    local st = via.call("POST", "/v1/integrations/" .. it_id .. "/events", identifies(EVENTS, prefix))
    assert.are.equal(202, st, via.bodies[#via.bodies])

    -- the import is queued at the emulator, and its first status request answered "active"
    local batch_id = S.eventually(function()
      for _, r in ipairs(emu.requests()) do
        if r.path == "/api/3/import/info" and r.batch_id ~= "" and not seen_ids[r.batch_id] then return r.batch_id end
      end
    end, 60)
    assert.is_truthy(batch_id, "no import was queued within 60 s")
    -- the node that sent it has it in its own store's open batches
    local owner
    for i = 1, 2 do if not nodes[i].stopped and rows(states[i], "select count(*) from batches") == 1 then owner = i end end
    assert.is_truthy(owner, "no node holds the batch it sent")
    local survivor = 3 - owner
    -- every node has the batch from the outcomes topic before its owner goes
    assert.is_truthy(S.eventually(function() return rows(states[survivor], "select count(*) from handed") == 1 end, 10),
      "node " .. survivor .. " never stored the queued batch")
    local batches = metric(nodes[survivor], "blueprint_batches_total")
    local batched = metric(nodes[survivor], "blueprint_batched_events_total")

    local lost_at = 0
    for _, r in ipairs(emu.requests()) do lost_at = math.max(lost_at, r.at_ms) end
    lose(nodes[owner])

    -- the survivor takes the partition over and asks for that import's status
    local asked = S.eventually(function()
      for _, r in ipairs(emu.requests()) do
        if r.path == "/api/3/import/info" and r.batch_id == batch_id and r.at_ms > lost_at then return true end
      end
    end, 45)
    assert.is_truthy(asked, "node " .. survivor .. " never asked for the status of import " .. batch_id .. "; its log:\n"
      .. nodes[survivor].logs():sub(-4000))
    emu.post("/_emulator/imports/complete", "{}")

    local mine = function(e) return e.event.messageId:sub(1, #prefix) == prefix end
    local live = S.eventually(function()
      local s, body = nodes[survivor].call("GET", "/v1/admin/integrations/" .. it_id
        .. "/live-events?limit=500&outcome=delivered")
      if s ~= 200 then return nil end
      local n = 0
      for _, e in ipairs(body.events) do if mine(e) then n = n + 1 end end
      return n >= EVENTS and body
    end, 30)
    assert.is_truthy(live, "the events were not all delivered after the handover")
    local seen = {}
    for _, e in ipairs(live.events) do
      if mine(e) then
        local id = e.event.messageId
        seen[id] = (seen[id] or 0) + 1
        assert.matches("^delivered in batch", e.outcome.reason)
      end
    end
    for i = 1, EVENTS do
      local id = prefix .. i
      assert.are.equal(1, seen[id], id .. " delivered " .. (seen[id] or 0) .. " times")
    end

    -- one import of these contacts at the emulator, none sent one by one
    local imports, syncs = 0, 0
    local probe = prefix .. "1@example.com"
    for _, r in ipairs(emu.requests()) do
      if r.path == "/api/3/import/bulk_import" and r.body:find(probe, 1, true) then imports = imports + 1 end
      if r.path == "/api/3/contact/sync" and r.body:find('"' .. prefix, 1, true) then syncs = syncs + 1 end
    end
    assert.are.equal(1, imports, "imported again after the handover")
    assert.are.equal(0, syncs, "events sent one by one after the handover")
    -- /metrics counts each node's own: the survivor sent no batch, and delivered these in one
    assert.are.equal(batches, metric(nodes[survivor], "blueprint_batches_total"))
    assert.are.equal(batched + EVENTS, metric(nodes[survivor], "blueprint_batched_events_total"))
    -- the outcomes closed the handed batch on the survivor
    assert.is_truthy(S.eventually(function() return rows(states[survivor], "select count(*) from handed") == 0 end, 10))
    return survivor
  end

  it("resumes an import queued by a node killed with SIGKILL on the node that takes its partition over", function()
    local st, it = nodes[1].call("POST", INSTALL, S.install_body("shop", S.emulator_account(emu, 0)))
    assert.are.equal(201, st, nodes[1].bodies[#nodes[1].bodies])
    it_id = it.id
    assert.is_truthy(S.eventually(function()
      return nodes[2].call("GET", "/v1/admin/integrations/" .. it.id) == 200
    end, 10), "node 2 does not have the integration")
    hand_over("h", function(node) node.kill(); node.stopped = true end)
    assert.are.equal(EVENTS, #emu.contacts())
  end)

  it("resumes an import queued by a node that stops (SIGTERM) on the node that takes its partition over", function()
    -- the killed node comes back (its state directory kept) and takes its share of the partitions
    local back = nodes[1].stopped and 1 or 2
    start_node(back)
    assert.is_truthy(S.eventually(function()
      local st, h = nodes[back].call("GET", "/healthz")
      return (st == 200 or st == 503) and h.kafka and #h.kafka.assigned_partitions > 0
    end, 30), "the restarted node reads no partition")
    hand_over("g", function(node) node.stop() end)
    assert.are.equal(2 * EVENTS, #emu.contacts())
  end)
end)
