-- The blueprint author's toolkit: `blueprint test` on a blueprint folder of
-- one's own (outside this repository), --update, readable differences, and
-- --help on every command.
local S = require("support")

-- A copy of the ActiveCampaign blueprint with one fixture case, in a temp dir.
local function own_blueprint()
  local root = S.tmpdir()
  local bp = root .. "/my-ac"
  assert(os.execute("cp -r " .. S.AC .. " " .. bp .. " && rm -rf " .. bp .. "/tests && mkdir -p " .. bp .. "/tests/pv"))
  S.write(bp .. "/tests/pv/config.yaml", S.base_config)
  S.write(bp .. "/tests/pv/events.ndjson", S.track_json("Product Viewed", "ada@example.com",
    '{"product_id":"sku-1","name":"Tea","price":3.5,"category":"Drinks"}', "pv-1") .. "\n")
  return root, bp
end

describe("blueprint test #cli", function()
  it("writes the expected output of a new case with --update, then passes", function()
    local root, bp = own_blueprint()
    finally(function() os.execute("rm -rf " .. root) end)
    local out, _, code = S.sh(S.bin .. " test " .. bp)
    assert.are.equal(4, code)
    assert.matches("FAIL pv: no expected.ndjson yet", out, nil, true)
    out, _, code = S.sh(S.bin .. " test " .. bp .. " --update")
    assert.are.equal(0, code, out)
    assert.matches("updated " .. bp .. "/tests/pv/expected.ndjson", out, nil, true)
    out, _, code = S.sh(S.bin .. " test " .. bp)
    assert.are.equal(0, code, out)
    assert.matches("ok   pv (1 events)", out, nil, true)
    assert.matches("1 passed, 0 failed", out, nil, true)
  end)

  it("names the key of eventdata that a mapping change adds, and --update accepts it", function()
    local root, bp = own_blueprint()
    finally(function() os.execute("rm -rf " .. root) end)
    -- the author's own mapping, independent of what the repository's one sends today
    local function mapping(extra)
      S.write(bp .. "/product_viewed.lua", table.concat({
        "return function(event, ctx)",
        "  local p = event.properties",
        '  return helpers.track_event(event, ctx, "product_viewed", {',
        '    product_id = ctx.get(p, "product_id"), name = ctx.get(p, "name"),' .. (extra or ""),
        '  }, { "product_id" })',
        "end", "" }, "\n"))
    end
    mapping()
    assert.are.equal(0, select(3, S.sh(S.bin .. " test " .. bp .. " --update")))
    mapping(' shelf = ctx.get(p, "category"),')
    local out, _, code = S.sh(S.bin .. " test " .. bp)
    assert.are.equal(4, code, out)
    assert.matches("FAIL pv: 1 of 1 events differ", out, nil, true)
    assert.matches('requests[2].decoded.eventdata.shelf: expected (absent), got "Drinks"', out, nil, true)   -- after the Event Tracking check and the sync
    -- one short line per difference, not two copies of the whole line
    for line in out:gmatch("[^\n]+") do assert.is_true(#line < 200, line) end
    out, _, code = S.sh(S.bin .. " test " .. bp .. " --update")
    assert.are.equal(0, code, out)
    assert.are.equal(0, select(3, S.sh(S.bin .. " test " .. bp)))
  end)

  it("says where fixtures go when a folder has none, and rejects a broken blueprint", function()
    local root = S.tmpdir()
    finally(function() os.execute("rm -rf " .. root) end)
    assert(os.execute("cp -r " .. S.AC .. " " .. root .. "/bp && rm -rf " .. root .. "/bp/tests"))
    local _, err, code = S.sh(S.bin .. " test " .. root .. "/bp")
    assert.are.equal(1, code)
    assert.matches("tests/CASE/ with config.yaml, events.ndjson and expected.ndjson", err, nil, true)
    _, err, code = S.sh(S.bin .. " test " .. root .. "/nowhere")
    assert.are.equal(2, code, err)
  end)

  it("runs one case with --case", function()
    local out, _, code = S.sh(S.bin .. " test " .. S.AC .. " --case install-body")
    assert.are.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out, nil, true)
  end)
end)

describe("--help #cli", function()
  for _, cmd in ipairs({ "dry-run", "test", "deliver", "dlq", "serve", "token", "rotate-key" }) do
    it("explains " .. cmd, function()
      local out, err, code = S.sh(S.bin .. " " .. cmd .. " --help")
      assert.are.equal(0, code, err)
      assert.matches("^usage: blueprint " .. cmd:gsub("%-", "%%-"), out)
    end)
  end
end)

describe("exit status #cli", function()
  it("is 1 for a config file that is not there and 2 for one that is wrong", function()
    local _, err, code = S.sh(S.bin .. " dry-run " .. S.AC .. " --config /nonexistent/config.yaml", "")
    assert.are.equal(1, code)
    assert.matches("cannot read config file /nonexistent/config.yaml", err, nil, true)
    local bad = os.tmpname()
    S.write(bad, "api_url: https://acme.api-us1.com\napi_kye: x\n")
    finally(function() os.remove(bad) end)
    _, err, code = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. bad, "")
    assert.are.equal(2, code)
    assert.matches(bad .. ":2:", err, nil, true)
  end)
end)
