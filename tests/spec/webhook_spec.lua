-- The webhook blueprint (blueprints/webhook): a second vendor that needs no
-- C of its own.  Dry-run shows where the signature goes, never the secret;
-- delivery to the emulator's /webhook receiver carries the HMAC-SHA256 of
-- the exact body bytes, which the receiver checks.  Tagged #cli so the run
-- is repeated with the ASan/UBSan build.
local S = require("support")

local BP = "blueprints/webhook"
local SECRET = "whsec-3b9f-DO-NOT-LEAK"

local EVENTS = table.concat({
  '{"type":"identify","messageId":"h1","userId":"u1","traits":{"email":"ada@example.com","name":"Zoë 山田"}}',
  '{"type":"track","messageId":"h2","userId":"u1","event":"Order Completed","properties":{"order_id":"o-1","revenue":12.5}}',
  '{"type":"track","messageId":"h3","userId":"u1","event":"Debug Ping"}',
  '{"type":"page","messageId":"h4","anonymousId":"a1","name":"Pricing","properties":{"url":"https://x.example/p"}}',
  '{"type":"screen","messageId":"h5","userId":"u1","name":"Home"}',
  '{"type":"group","messageId":"h6","userId":"u1","groupId":"g1","traits":{"plan":"pro"}}',
}, "\n") .. "\n"

local function config(url, secret, extra)
  local path = os.tmpname()
  S.write(path, table.concat({
    "url: " .. url,
    secret and ("signing_secret: " .. secret) or "",
    "consent:",
    "  default_policy: allow",
    "events:",
    "  Order Completed: {enabled: true}",
    extra or "",
  }, "\n") .. "\n")
  return path
end

local function run(cmd, cfg, args)
  local out, err, code = S.sh(S.bin .. " " .. cmd .. " " .. BP .. " --config " .. cfg .. " " .. (args or ""), EVENTS)
  local lines = {}
  for _, l in ipairs(S.lines(out)) do lines[#lines + 1] = assert(S.core.json_decode(l), l) end
  return S.by_index(lines), err, code, out
end

-- The hex HMAC-SHA256 of text keyed with key, computed by openssl(1): a
-- check independent of both the runtime and the emulator.
local function openssl_hmac(key, text)
  local out = S.sh("openssl dgst -sha256 -hmac '" .. key .. "' -r", text)
  return out:match("^(%x+)")
end

describe("webhook blueprint #cli", function()
  it("dry-run shows the signature placeholder and never the secret", function()
    local cfg = config("https://hooks.example.com/in", SECRET)
    finally(function() os.remove(cfg) end)
    local by, err, code, out = run("dry-run", cfg)
    assert.are.equal(0, code, err)
    assert.is_nil(out:find(SECRET, 1, true))
    for _, i in ipairs({ 0, 1, 3, 4, 5 }) do
      assert.are.equal("deliver", by[i].outcome, by[i].reason)
      local r = by[i].requests[1]
      assert.are.equal("https://hooks.example.com/in", r.url)
      assert.are.equal("[hmac-sha256 of the body with secret 'signing_secret']", r.headers["X-Signature-256"])
    end
    assert.are.equal("drop", by[2].outcome)
    assert.matches("custom event not enabled: 'Debug Ping'", by[2].reason, 1, true)
    local body = S.core.json_decode(by[1].requests[1].body)
    assert.are.same({ type = "track", event = "Order Completed", messageId = "h2", userId = "u1",
                      properties = { order_id = "o-1", revenue = 12.5 } }, body)
  end)

  it("without a signing secret sends no signature header", function()
    local cfg = config("https://hooks.example.com/in", nil, "signature_header: X-Mine")
    finally(function() os.remove(cfg) end)
    local by, err, code = run("dry-run", cfg)
    assert.are.equal(0, code, err)
    assert.are.same({ ["Content-Type"] = "application/json" }, by[0].requests[1].headers)
  end)

  it("delivers each body signed: the receiver checks the HMAC of the exact bytes", function()
    local emu = S.start_emulator("--rate-limit 0 --webhook-secret " .. SECRET .. " --webhook-header X-Hook-Sig")
    local cfg = config(emu.url .. "/webhook/in", SECRET, "signature_header: X-Hook-Sig")
    local st = S.tmpdir()
    finally(function() emu.stop(); os.remove(cfg) end)
    local by, err, code, out = run("deliver", cfg, "--state " .. st .. " --rate-limit 200")
    assert.are.equal(0, code, err)
    assert.is_nil(out:find(SECRET, 1, true))
    for _, i in ipairs({ 0, 1, 3, 4, 5 }) do assert.are.equal("delivered", by[i].outcome, by[i].reason) end
    assert.are.equal("drop", by[2].outcome)
    local reqs = emu.requests()
    assert.are.equal(5, #reqs)
    local sent = {}
    for i = 0, 5 do if by[i].requests[1] then sent[by[i].requests[1].body] = true end end
    for _, r in ipairs(reqs) do
      assert.are.equal(200, r.status)                       -- the emulator's own check passed
      assert.are.equal("/webhook/in", r.path)
      assert.are.equal("application/json", r.content_type)
      assert.is_true(sent[r.body], r.body)                  -- the body dry-run shows, byte for byte
      assert.matches("^%x+$", r.signature)
      assert.are.equal(64, #r.signature)
      assert.are.equal(openssl_hmac(SECRET, r.body), r.signature)
    end
  end)

  it("a receiver with another secret refuses the signature: the integration is held (401)", function()
    local emu = S.start_emulator("--rate-limit 0 --webhook-secret not-the-same")
    local cfg = config(emu.url .. "/webhook", SECRET)
    local st = S.tmpdir()
    finally(function() emu.stop(); os.remove(cfg) end)
    local _, err, code = run("deliver", cfg, "--state " .. st .. " --rate-limit 200")
    assert.are.equal(3, code, err)
    local reqs = emu.requests()
    assert.is_true(#reqs >= 1)
    assert.are.equal(401, reqs[1].status)
    assert.are.equal(64, #reqs[1].signature)
  end)

  it("delivers unsigned when the config has no secret", function()
    local emu = S.start_emulator("--rate-limit 0")
    local cfg = config(emu.url .. "/webhook", nil)
    local st = S.tmpdir()
    finally(function() emu.stop(); os.remove(cfg) end)
    local by, err, code = run("deliver", cfg, "--state " .. st .. " --rate-limit 200")
    assert.are.equal(0, code, err)
    assert.are.equal("delivered", by[0].outcome, by[0].reason)
    for _, r in ipairs(emu.requests()) do assert.are.equal("", r.signature) end
  end)

  it("ctx.hmac_sha256 is a whole header value naming a declared secret", function()
    local dir = S.tmpdir()
    os.execute("cp -r " .. BP .. "/. " .. dir .. "/")
    local cfg = config("https://hooks.example.com/in", SECRET)
    finally(function() os.remove(cfg) end)
    local cases = {
      { 'headers = { ["X-S"] = ctx.hmac_sha256("nope") }', "declares no secret field named 'nope'" },
      { 'headers = { ["X-S"] = "sha256=" .. ctx.hmac_sha256("signing_secret") }', "cannot be joined to other text" },
      { 'json = { sig = ctx.hmac_sha256("signing_secret") }', "sig" },
    }
    for _, c in ipairs(cases) do
      S.write(dir .. "/event.lua", "return function(event, ctx) return { url = ctx.config.url, "
        .. c[1] .. (c[1]:find("^json") and "" or ", json = {}") .. " } end\n")
      local out = S.sh(S.bin .. " dry-run " .. dir .. " --config " .. cfg, EVENTS)
      local first = assert(S.core.json_decode(S.lines(out)[1]), out)
      assert.are.equal("error", first.outcome)
      assert.matches(c[2], first.reason, 1, true)
    end
  end)
end)
