-- Cluster mode: one blueprint revision across the nodes.  Three `serve
-- --kafka` nodes on librdkafka's mock cluster, each with its own copy of
-- the blueprints folder (so nothing travels through a shared disk): a save
-- or a rollback in the editor of node 1 becomes the running revision of
-- every node, events are mapped by it wherever they are delivered, a node
-- started later runs it, and a revision a node cannot load is refused with
-- the running one kept.  One cluster for the whole file, in order.  Tagged
-- #kafka: run by its own suite (ASan/UBSan build), not with the other specs.
local S = require("support")
local core = S.core

local VENDOR = "activecampaign"
local FILES = "/v1/admin/blueprints/" .. VENDOR .. "/files"
local INSTALL = "/v1/admin/integration-catalog/" .. VENDOR .. "/install"
local ORIGINAL = 'phone = ctx.get(traits, "phone"),'

local kafka, emu, keyfile, env, topic_name
local nodes, folders = {}, {}

-- A copy of the repository's blueprints: each node has its own folder.
local function copy_blueprints()
  local dir = S.tmpdir()
  assert(os.execute("cp -r blueprints/. " .. dir .. "/"))
  return dir
end

local function start_node(i, folder)
  folders[i] = folder or copy_blueprints()
  nodes[i] = S.start_server({
    state = S.tmpdir(), blueprints = folders[i], retry_base_ms = 200, env = env, start_seconds = 60,
    args = "--kafka " .. kafka.brokers .. " --kafka-session-timeout-ms 6000 --node node" .. i,
  })
  return nodes[i]
end

local function now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local function read(path)
  local f = io.open(path)
  local t = f and f:read("a")
  if f then f:close() end
  return t
end

-- The node's /healthz entry of the blueprint (and the status code).
local function blueprint_health(node)
  local st, h = node.call("GET", "/healthz")
  for _, b in ipairs(type(h) == "table" and h.blueprints or {}) do
    if b.vendor == VENDOR then return b, st end
  end
  return nil, st
end

local function running(node)
  local b = blueprint_health(node)
  return b and b.running
end

-- Wait (60 s at most) until each node of `which` runs rev; fails naming
-- what each one runs.  Returns the seconds it took.
local function reaches(which, rev)
  local t0 = now()
  local ok = S.eventually(function()
    for _, i in ipairs(which) do if running(nodes[i]) ~= rev then return false end end
    return true
  end, 60)
  if not ok then
    local seen = {}
    for _, i in ipairs(which) do
      local b, st = blueprint_health(nodes[i])
      seen[#seen + 1] = ("node %d runs %s (healthz %s: %s)"):format(i, tostring(b and b.running), tostring(st),
        b and core.json_encode(b) or "no entry")
    end
    error(("revision %s did not reach every node within 60 s: %s"):format(rev, table.concat(seen, "; ")), 2)
  end
  return now() - t0
end

-- helpers.lua of node 1's folder with its phone line changed to `line`.
local function save(node, line, message)
  local text = assert(read(folders[1] .. "/" .. VENDOR .. "/helpers.lua"))
  local changed, n = text:gsub(ORIGINAL:gsub("%p", "%%%0"), (line:gsub("%%", "%%%%")))
  if n == 0 then   -- a previous save: replace whichever phone line it has
    changed, n = text:gsub('phone = ctx%.get%(traits, "phone"%)[^\n]*', (line:gsub("%%", "%%%%")))
  end
  assert(n == 1, "helpers.lua has no phone line to change")
  local st, body = node.call("PUT", FILES, core.json_encode({ files = { ["helpers.lua"] = changed }, message = message }))
  assert.are.equal(200, st, node.bodies[#node.bodies])
  return body.revision, changed
end

-- The revision a folder's files make, as the runtime computes it (FNV-1a
-- of name and contents per file, mixed, summed; fingerprint.c).
local function revision_of(files)
  local sum = 0x9e3779b97f4a7c15
  for name, text in pairs(files) do
    local h, s = 1469598103934665603, name .. "\0" .. text
    for i = 1, #s do h = (h ~ s:byte(i)) * 1099511628211 end
    h = h ~ (h >> 33); h = h * 0xff51afd7ed558ccd; h = h ~ (h >> 33); h = h * 0xc4ceb9fe1a85ec53; h = h ~ (h >> 33)
    sum = sum + h
  end
  return ("%012x"):format(sum >> 16)
end

-- The newest blueprint record of the configuration topic (read with kcat).
local function newest_record()
  local out = S.sh("kcat -b " .. kafka.brokers .. " -C -t " .. topic_name .. " -e -q -f '%k\\t%s\\n'")
  local last
  for line in out:gmatch("[^\n]+") do
    local key, value = line:match("^([^\t]*)\t(.*)$")
    if key == "blueprint:" .. VENDOR then last = value end
  end
  return last and core.json_decode(last)
end

-- A record (a table, or its JSON text) into the configuration topic, under
-- key (the blueprint's own by default).
local function produce(record, key)
  S.sh("kcat -b " .. kafka.brokers .. " -P -t " .. topic_name .. " -k " .. (key or "blueprint:" .. VENDOR),
    type(record) == "string" and record or core.json_encode(record))
end

-- Wait until every node of `which` says of the blueprint what ok accepts.
local function every_node(which, what, ok)
  for _, i in ipairs(which) do
    local e = S.eventually(function()
      local b = blueprint_health(nodes[i])
      return b and ok(b) and b
    end, 60)
    assert.is_truthy(e, ("node %d: %s; it says %s"):format(i, what, core.json_encode(blueprint_health(nodes[i]))))
  end
end

describe("one blueprint revision across the cluster #kafka", function()
  local id, original, saved

  lazy_setup(function()
    kafka = S.start_kafka()
    emu = S.start_emulator("--accounts 1")
    env, keyfile = S.cluster_env()
    topic_name = "blueprint.integrations"
    for i = 1, 3 do start_node(i) end
  end)

  lazy_teardown(function() S.stop_cluster(nodes, emu, kafka, keyfile) end)

  it("runs a blueprint saved on node 1 on nodes 2 and 3, and maps the events node 2 takes with it", function()
    local st, it = nodes[1].call("POST", INSTALL, S.install_body("shop", S.emulator_account(emu, 0)))
    assert.are.equal(201, st, nodes[1].bodies[#nodes[1].bodies])
    id = it.id
    original = running(nodes[1])
    assert.is_truthy(original, "node 1's /healthz names no running revision")
    for i = 1, 3 do
      local b, code = blueprint_health(nodes[i])
      assert.are.equal(original, b.running, "node " .. i .. " starts with another revision")
      assert.are.equal(core.null, b.cluster, "no revision was told yet")
      assert.are.equal(200, code)
    end

    local changed
    saved, changed = save(nodes[1], 'phone = ctx.get(traits, "phone") or "rev-2",', "a phone for everyone")
    assert.are_not.equal(original, saved)
    assert.are.equal(saved, running(nodes[1]))
    local took = reaches({ 2, 3 }, saved)
    print(("# revision reached nodes 2 and 3 in %.3f s"):format(took))
    -- their own folders hold the saved files, and they say they run the cluster's revision
    for i = 2, 3 do
      assert.are.equal(changed, read(folders[i] .. "/" .. VENDOR .. "/helpers.lua"), "node " .. i .. "'s folder")
      local b, code = blueprint_health(nodes[i])
      assert.are.equal(200, code)
      assert.are.same({ revision = saved, status = "current" }, b.cluster)
    end

    -- an identify taken by node 2 is mapped by the saved revision, whichever node delivers it
    assert.is_truthy(S.eventually(function() return nodes[2].call("GET", "/v1/admin/integrations/" .. id) == 200 end, 10))
    st = nodes[2].call("POST", "/v1/integrations/" .. id .. "/events", S.identify("after-save@example.com", "after-save"))
    assert.are.equal(202, st, nodes[2].bodies[#nodes[2].bodies])
    local body = S.eventually(function()
      for _, r in ipairs(emu.requests()) do
        if r.path == "/api/3/contact/sync" and r.body:find("after-save@example.com", 1, true) then return r.body end
      end
    end, 60)
    assert.is_truthy(body, "the emulator never received the contact sync")
    assert.matches('"phone":"rev-2"', body, 1, true)
    local row = S.eventually(function()
      local code, live = nodes[2].call("GET", "/v1/admin/integrations/" .. id .. "/live-events")
      for _, e in ipairs(code == 200 and live.events or {}) do
        if e.event.messageId == "after-save" and e.outcome.outcome == "delivered" then return { e, live } end
      end
    end, 30)
    assert.is_truthy(row, "node 2's Live Events never showed the delivery")
    assert.are.equal(saved, row[1].outcome.blueprint_revision)
    assert.are.equal(saved, row[2].blueprint.running)
    assert.are.same({ revision = saved, status = "current" }, row[2].blueprint.cluster)
  end)

  it("rolls back on every node", function()
    local st, list = nodes[1].call("GET", "/v1/admin/blueprints/" .. VENDOR .. "/revisions")
    assert.are.equal(200, st)
    local first = list.revisions[#list.revisions]
    assert.are.equal(original, first.revision, "revision 1 is what was on disk")
    local body
    st, body = nodes[1].call("POST", "/v1/admin/blueprints/" .. VENDOR .. "/rollback",
      core.json_encode({ number = first.number }))
    assert.are.equal(200, st, nodes[1].bodies[#nodes[1].bodies])
    assert.are.equal(original, body.revision)
    local took = reaches({ 1, 2, 3 }, original)
    print(("# rollback reached nodes 2 and 3 in %.3f s"):format(took))
    for i = 2, 3 do
      assert.is_falsy(read(folders[i] .. "/" .. VENDOR .. "/helpers.lua"):find("rev-2", 1, true), "node " .. i)
    end
  end)

  it("runs the saved revision on a node started after the save", function()
    saved = save(nodes[1], 'phone = ctx.get(traits, "phone") or "rev-3",', "another phone")
    reaches({ 2, 3 }, saved)
    -- a fresh folder (the repository's revision) and an empty state: it reads the topic before it listens
    local late = start_node(4)
    local b = blueprint_health(late)
    assert.are.equal(saved, b and b.running, "node 4 runs " .. tostring(b and b.running) .. " at start")
    assert.are.same({ revision = saved, status = "current" }, b.cluster)
    assert.matches("rev-3", read(folders[4] .. "/" .. VENDOR .. "/helpers.lua"), 1, true)
    -- of the three records the topic holds (save, rollback, save), only the newest was applied
    local _, reloads = late.logs():gsub('"msg":"blueprint reloaded"', "")
    assert.are.equal(1, reloads, late.logs())
  end)

  it("refuses a revision that does not load: every node keeps its own and says so", function()
    local good = newest_record()
    assert.is_truthy(good, "no blueprint record in " .. topic_name)
    assert.are.equal(saved, good.revision)
    -- files that do not make the revision they name
    local tampered = core.json_decode(core.json_encode(good))
    tampered.files["identify.lua"] = tampered.files["identify.lua"] .. "\n-- changed on the way\n"
    produce(tampered)
    -- a revision whose Lua does not compile
    local broken = core.json_decode(core.json_encode(good))
    broken.files["identify.lua"] = "return function(event, ctx) this is not lua end\n"
    broken.revision = revision_of(broken.files)
    broken.actor = "kcat"
    produce(broken)
    for i = 1, 4 do
      local refused = S.eventually(function()
        local e = blueprint_health(nodes[i])
        return e and e.cluster and e.cluster.status == "refused" and e.cluster.revision == broken.revision
      end, 60)
      local b, code = blueprint_health(nodes[i])
      assert.is_truthy(refused, "node " .. i .. " did not refuse revision " .. broken.revision .. ": "
        .. core.json_encode(b))
      assert.are.equal(503, code, "node " .. i .. "'s /healthz")
      assert.are.equal(saved, b.running, "node " .. i .. " keeps its revision")
      -- the open /healthz says where the reason is (it may quote a config value), not the reason
      assert.matches("the reason is in its log and in Live Events", b.cluster.error, 1, true)
      assert.matches("identify.lua", nodes[i].logs(), 1, true)
      assert.matches("rev-3", read(folders[i] .. "/" .. VENDOR .. "/helpers.lua"), 1, true)
      assert.matches("blueprint revision from the cluster refused", nodes[i].logs(), 1, true)
      assert.matches("not the " .. saved .. " it names", nodes[i].logs(), 1, true)
    end
    -- Live Events says it too
    local _, live = nodes[2].call("GET", "/v1/admin/integrations/" .. id .. "/live-events")
    assert.are.equal("refused", live.blueprint.cluster.status)
    assert.matches("identify.lua", live.blueprint.cluster.error, 1, true)
    -- meanwhile a change on node 4's disk is neither run nor told (what a failed write left looks the same)
    local dir4 = folders[4] .. "/" .. VENDOR
    local stray = read(dir4 .. "/helpers.lua"):gsub('phone = ctx%.get%(traits, "phone"%)[^\n]*',
      'phone = ctx.get(traits, "phone") or "stray",')
    S.write(dir4 .. "/.helpers.lua.new", stray)
    assert(os.rename(dir4 .. "/.helpers.lua.new", dir4 .. "/helpers.lua"))
    assert.is_truthy(S.eventually(function()
      return nodes[4].logs():find("neither told to the other nodes nor run", 1, true)
    end, 60), "node 4 did not hold back the change on its disk: " .. nodes[4].logs():sub(-2000))
    for i = 1, 4 do assert.are.equal(saved, running(nodes[i]), "node " .. i) end
    -- a good save through any node ends it
    local fixed = save(nodes[3], 'phone = ctx.get(traits, "phone") or "rev-4",', "fixed")
    reaches({ 1, 2, 3, 4 }, fixed)
    for i = 1, 4 do
      local b, code = blueprint_health(nodes[i])
      assert.are.equal(200, code, "node " .. i)
      assert.are.same({ revision = fixed, status = "current" }, b.cluster)
    end
  end)

  it("refuses a revision that retypes a secret field without showing the secret", function()
    local good = newest_record()
    local retyped = core.json_decode(core.json_encode(good))
    local yaml, n = retyped.files["blueprint.yaml"]:gsub(
      "(key: api_key\n[^\n]*\n)    type: secret\n    required: true\n    sent_to: %[api_url%]\n",
      "%1    type: integer\n    required: true\n")
    assert.are.equal(1, n, "blueprint.yaml has no api_key field to retype")
    retyped.files["blueprint.yaml"] = yaml
    retyped.revision = revision_of(retyped.files)
    produce(retyped)
    for i = 1, 4 do
      local refused = S.eventually(function()
        local e = blueprint_health(nodes[i])
        return e and e.cluster and e.cluster.status == "refused" and e.cluster.revision == retyped.revision
      end, 60)
      local b = blueprint_health(nodes[i])
      assert.is_truthy(refused, "node " .. i .. " did not refuse revision " .. retyped.revision .. ": "
        .. core.json_encode(b))
      assert.matches("api_key", nodes[i].logs(), 1, true)
      local raw = nodes[i].bodies[#nodes[i].bodies]
      assert.is_falsy(raw:find(S.EMU_TOKEN, 1, true), "node " .. i .. "'s /healthz shows the secret: " .. raw)
      assert.is_falsy(nodes[i].logs():find(S.EMU_TOKEN, 1, true), "node " .. i .. "'s log shows the secret")
    end
    local fixed = save(nodes[1], 'phone = ctx.get(traits, "phone") or "rev-5",', "after the retype")
    reaches({ 1, 2, 3, 4 }, fixed)
  end)

  it("refuses records that name a file twice, a revision that is not one, or another blueprint", function()
    local good = newest_record()
    local all = { 1, 2, 3, 4 }
    -- a revision that is not 12 hex digits: refused, and /healthz stays JSON
    local odd = core.json_decode(core.json_encode(good))
    odd.revision = 'abc"}\\'
    produce(odd)
    every_node(all, "refuses a record whose revision is not one", function(b)
      return b.cluster and b.cluster.status == "refused" and b.cluster.revision == core.null
    end)
    for _, i in ipairs(all) do assert.matches("12 hex digits", nodes[i].logs(), 1, true) end
    -- a file named twice
    local twice = core.json_encode(good):gsub('"files":{', '"files":{"helpers.lua":"-- twice\\n",', 1)
    twice = twice:gsub('"revision":"%x+"', '"revision":"0123456789ab"', 1)
    produce(twice)
    every_node(all, "refuses a record naming a file twice", function(b)
      return b.cluster and b.cluster.status == "refused" and b.cluster.revision == "0123456789ab"
    end)
    for _, i in ipairs(all) do assert.matches("names the file 'helpers.lua' twice", nodes[i].logs(), 1, true) end
    -- files that do not make the revision this node runs: refused, yet it runs the cluster's revision
    local tampered = core.json_decode(core.json_encode(good))
    tampered.files["identify.lua"] = tampered.files["identify.lua"] .. "\n-- changed on the way\n"
    produce(tampered)
    every_node(all, "runs the revision the record names", function(b)
      return b.cluster and b.cluster.revision == good.revision and b.cluster.status == "current" and not b.cluster.error
    end)
    for i = 1, 4 do
      local _, code = blueprint_health(nodes[i])
      assert.are.equal(200, code, "node " .. i .. "'s /healthz")
    end
    -- under another blueprint's key: logged, nothing else changes
    produce(good, "blueprint:webhook")
    -- another vendor's files under its key and name
    local stray = core.json_decode(core.json_encode(good))
    stray.blueprint = "webhook"
    produce(stray, "blueprint:webhook")
    for i = 1, 4 do
      assert.is_truthy(S.eventually(function()
        local logs = nodes[i].logs()
        return logs:find("the record's key is not", 1, true) and logs:find("not 'webhook' as the record does", 1, true)
      end, 60), "node " .. i .. " did not refuse the records of another blueprint: " .. nodes[i].logs():sub(-2000))
      assert.are.equal(good.revision, running(nodes[i]))
      assert.matches("rev-", read(folders[i] .. "/" .. VENDOR .. "/helpers.lua"), 1, true)
    end
    -- the webhook blueprint's own files end its refusal
    local files = {}
    for _, name in ipairs({ "blueprint.yaml", "event.lua", "event_batch.lua", "helpers.lua" }) do
      files[name] = assert(read(folders[1] .. "/webhook/" .. name))
    end
    produce({ blueprint = "webhook", revision = revision_of(files), actor = "kcat", at = 0, files = files },
      "blueprint:webhook")
    for i = 1, 4 do
      assert.is_truthy(S.eventually(function()
        local st, h = nodes[i].call("GET", "/healthz")
        for _, b in ipairs(type(h) == "table" and h.blueprints or {}) do
          if b.vendor == "webhook" then return st == 200 and b.cluster ~= core.null and b.cluster.status == "current" end
        end
      end, 60), "node " .. i .. ": " .. nodes[i].bodies[#nodes[i].bodies])
    end
  end)

  it("runs a change made on disk on node 2 (hot reload) on every node", function()
    local path = folders[2] .. "/" .. VENDOR .. "/helpers.lua"
    local before, text = running(nodes[2]), assert(read(path))
    local changed, n = text:gsub('phone = ctx%.get%(traits, "phone"%)[^\n]*', 'phone = ctx.get(traits, "phone") or "disk",')
    assert.are.equal(1, n)
    -- written beside, then renamed over it (a dotfile: the watcher ignores it)
    S.write(folders[2] .. "/" .. VENDOR .. "/.helpers.lua.new", changed)
    assert(os.rename(folders[2] .. "/" .. VENDOR .. "/.helpers.lua.new", path))
    local rev = S.eventually(function()
      local r = running(nodes[2])
      return r ~= before and r
    end, 60)
    assert.is_truthy(rev, "node 2 did not reload the change on its disk")
    local took = reaches({ 1, 3, 4 }, rev)
    print(("# a reload from disk on node 2 reached the other nodes in %.3f s"):format(took))
    assert.are.equal(changed, read(folders[1] .. "/" .. VENDOR .. "/helpers.lua"))
  end)

  it("writes nothing when the brokers do not take the revision (503), and saves again once they do", function()
    local path = folders[1] .. "/" .. VENDOR .. "/identify.lua"
    local before, text = running(nodes[1]), read(path)
    local body = core.json_encode({ files = { ["identify.lua"] = text .. "\n-- while Kafka is away\n" } })
    kafka.down()
    local st, answer = nodes[1].call("PUT", FILES, body)
    assert.are.equal(503, st, nodes[1].bodies[#nodes[1].bodies])
    assert.are.equal("CLUSTER_UNAVAILABLE", answer.error.code)
    assert.matches("nothing was written", answer.error.message, 1, true)
    assert.are.equal(text, read(path))
    assert.are.equal(before, running(nodes[1]))
    kafka.up()
    -- a refused save takes up to 5 s (the brokers' acknowledgement timeout): poll by the clock
    local saved_again, deadline = nil, now() + 90
    repeat
      local code, b = nodes[1].call("PUT", FILES, body)
      saved_again = code == 200 and b.revision
    until saved_again or now() > deadline or not os.execute("sleep 0.2")
    assert.is_truthy(saved_again, "no save was taken after the brokers came back: " .. nodes[1].bodies[#nodes[1].bodies])
    reaches({ 2, 3, 4 }, saved_again)
  end)

  it("delivers, on a node started later, with a secret field a newer revision added", function()
    -- a second API key field; every request sends it when it is set
    local dir = folders[1] .. "/" .. VENDOR
    local yaml, n = read(dir .. "/blueprint.yaml"):gsub("(\n  %- key: event_tracking_account_id\n)",
      "\n  - key: api_key_2\n    label: Second API key\n    type: secret\n    sent_to: [api_url]\n%1", 1)
    assert.are.equal(1, n, "blueprint.yaml has no event_tracking_account_id field")
    local helpers, m = read(dir .. "/helpers.lua"):gsub('ctx%.secret%("api_key"%)',
      '(ctx.secret("api_key_2") or ctx.secret("api_key"))')
    assert.is_true(m > 0, "helpers.lua sends no api_key")
    local st, body = nodes[1].call("PUT", FILES, core.json_encode({
      files = { ["blueprint.yaml"] = yaml, ["helpers.lua"] = helpers }, message = "a second key" }))
    assert.are.equal(200, st, nodes[1].bodies[#nodes[1].bodies])
    reaches({ 1, 2, 3, 4 }, body.revision)
    -- an integration whose only working key is the new field's
    local account = S.emulator_account(emu, 0)
    account.api_key, account.api_key_2 = "not-the-key", S.EMU_TOKEN
    local it
    st, it = nodes[1].call("POST", INSTALL, S.install_body("second key", account))
    assert.are.equal(201, st, nodes[1].bodies[#nodes[1].bodies])
    local late = start_node(5)
    assert.are.equal(body.revision, running(late), "node 5 does not run the revision with the new field")
    -- node 5 alone: it delivers every partition
    for i = 1, 4 do nodes[i].stop() end
    st = late.call("POST", "/v1/integrations/" .. it.id .. "/events", S.identify("second-key@example.com", "second-key"))
    assert.are.equal(202, st, late.bodies[#late.bodies])
    local seen
    local delivered = S.eventually(function()
      local code, live = late.call("GET", "/v1/admin/integrations/" .. it.id .. "/live-events")
      for _, e in ipairs(code == 200 and live.events or {}) do
        if e.event.messageId == "second-key" then
          seen = e.outcome
          if e.outcome.outcome == "delivered" then return true end
        end
      end
    end, 90)
    assert.is_truthy(delivered, "node 5 did not deliver the event: " .. core.json_encode(seen or "no outcome")
      .. "\n" .. late.logs():sub(-3000))
  end)
end)
