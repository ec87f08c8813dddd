-- Cluster mode, the default topic mode (per_integration): two integrations
-- on one ActiveCampaign account are two delivery topics, whose partitions
-- for the account may be read by two nodes.  Each node paces the account
-- at m/k of its limit (k integrations on it, m of their partitions here),
-- so together they stay within the account's 5 requests/s.  Tagged #kafka:
-- run by the cluster suite (ASan/UBSan build).
local S = require("support")
local core = S.core

local TIMING = not os.getenv("BLUEPRINT_TEST_SANITIZER")
local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"

-- The node's latest word on the shared account: m of k partitions here
-- (told when it changes), and whether the node was assigned partitions.
local function part_of(node)
  local m, k, assigned = nil, nil, false
  for line in node.logs():gmatch("[^\n]+") do
    if line:find("paced in part by this node", 1, true) then
      local a, b = line:match("(%d+) of its (%d+) integrations' partitions here")
      if a then m, k = tonumber(a), tonumber(b) end
    elseif line:find("kafka: partition assigned", 1, true) then
      assigned = true
    end
  end
  return m, k, assigned
end

describe("pacing an account shared by integrations across nodes #kafka", function()
  local kafka, emu, keyfile, env, nodes = nil, nil, nil, nil, {}

  lazy_setup(function()
    kafka = S.start_kafka()
    emu = S.start_emulator("--rate-limit 5")
    env, keyfile = S.cluster_env()
  end)

  -- one by one (--no-batch): the point is the account's pace, not how few requests a bulk import needs
  local function start_node(i)
    nodes[i] = S.start_server({
      state = S.tmpdir(), retry_base_ms = 200, env = env, start_seconds = 60, rate = false,
      args = "--no-batch --kafka " .. kafka.brokers .. " --kafka-session-timeout-ms 6000 --node node" .. i,
    })
  end

  lazy_teardown(function() S.stop_cluster(nodes, emu, kafka, keyfile) end)

  it("gives each node its part of the account's limit, the parts adding up to it, and stays under 5 requests/s", function()
    start_node(1)
    local account = S.emulator_account(emu, 0)
    local ids = {}
    -- four integrations (four topics of 4 partitions: the account is the same partition number in
    -- each); node 2 joins once node 1 reads them all, and takes some partitions of every topic
    for i = 1, 4 do
      local st, it = nodes[1].call("POST", INSTALL, S.install_body("shared-" .. i, account))
      assert.are.equal(201, st, core.json_encode(it))
      ids[i] = it.id
    end
    -- node 1 reads all of them, then node 2 joins
    assert.is_truthy(S.eventually(function() local m = part_of(nodes[1]); return m == 4 end, 60),
      "node 1 alone does not pace all of the shared account")
    start_node(2)
    -- once node 2 reads partitions too (the group settled), every partition of the four topics is
    -- read by one node or the other: the parts add up to 4 of 4
    local settled = S.eventually(function()
      local sum = 0
      for i = 1, 2 do
        local m, k, assigned = part_of(nodes[i])
        if not m or k ~= 4 or not assigned then return false end
        sum = sum + m
      end
      return sum == 4
    end, 60)
    local seen = {}
    for i = 1, 2 do
      local m, k = part_of(nodes[i])
      seen[#seen + 1] = ("node %d: %s of %s"):format(i, tostring(m), tostring(k))
    end
    assert.is_truthy(settled, "the nodes' parts of the shared account: " .. table.concat(seen, ", "))
    print("# " .. table.concat(seen, ", "))

    -- 10 identifies for each integration (8 s of the account's quota), posted through both nodes
    local emails = {}
    for n = 1, 10 do
      for i = 1, 4 do
        local email = ("shared%d-%d@example.com"):format(i, n)
        emails[#emails + 1] = email
        local st = nodes[(n % 2) + 1].call("POST", "/v1/integrations/" .. ids[i] .. "/events",
          S.identify(email, "s" .. i .. "-" .. n))
        assert.are.equal(202, st)
      end
    end
    local have
    local all = S.eventually(function()
      have = {}
      for _, c in ipairs(emu.contacts()) do have[c.email] = true end
      for _, e in ipairs(emails) do if not have[e] then return false end end
      return true
    end, 90)
    if not all then
      local n, lines = 0, {}
      for _, e in ipairs(emails) do if have[e] then n = n + 1 end end
      for i = 1, 2 do
        for line in nodes[i].logs():gmatch("[^\n]+") do
          if line:find("paced in part", 1, true) or line:find("partition assigned", 1, true)
            or line:find("partition revoked", 1, true) or line:find('"level":"error"', 1, true) then
            lines[#lines + 1] = "node " .. i .. ": " .. line
          end
        end
      end
      local dump = os.getenv("PACE_SPEC_DUMP")
      if dump then
        for i = 1, 2 do S.write(dump .. "-node" .. i .. ".log", nodes[i].logs()) end
        local missing = {}
        for _, e in ipairs(emails) do if not have[e] then missing[#missing + 1] = e end end
        S.write(dump .. "-missing.txt", table.concat(missing, "\n"))
      end
      error(("delivered %d of %d; the nodes said:\n%s"):format(n, #emails, table.concat(lines, "\n")))
    end
    local worst, _, late, window = S.pacing_report(emu.requests())
    print(("# the account's busiest second: %d requests"):format(worst))
    if TIMING then
      assert.is_true(worst <= 5, worst .. " requests within one second on the shared account: " .. window)
      assert.are.equal(0, #late, "429s after the first second")
    end
  end)
end)
