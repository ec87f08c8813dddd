-- Config validation against the ActiveCampaign blueprint's fields.
local S = require("support")

local function check(text)
  local e, err = S.core.open_text(S.AC, text)
  return e, err
end

local GOOD = "api_url: https://acme.api-us1.com\napi_key: abc123\n"

describe("config validation", function()
  it("accepts the minimal config", function()
    assert.is_truthy(check(GOOD))
  end)

  it("accepts the Management API install body as JSON", function()
    assert.is_truthy(check('{"name":"ActiveCampaign","variant":"default","config":{"api_url":"https://acme.api-us1.com",'
      .. '"api_key":"abc123","event_tracking_account_id":"1","event_tracking_key":"k"},"delivery_mode":"server_side"}'))
  end)

  local bad = {
    { "api_key: abc\n", "config field 'api_url' is required" },
    { "api_url: https://acme.api-us1.com\n", "config field 'api_key' is required" },
    { "api_url: acme.api-us1.com\napi_key: k\n", "must be an absolute https:// URL" },
    { "api_url: http://acme.api-us1.com\napi_key: k\n", "plain http:// is allowed only for 127.0.0.1" },
    { "api_url: ftp://acme.api-us1.com\napi_key: k\n", "must be an absolute https:// URL" },
    { "api_url: https://\napi_key: k\n", "has no host name" },
    { "api_url: https://acme.api-us1.com\napi_key: \"abc def\"\n", "must not contain spaces" },
    { "api_url: https://acme.api-us1.com\napi_key: \"abc\\n\"\n", "line breaks" },
    { GOOD .. "event_tracking_account_id: abc\nevent_tracking_key: k\n", "must be a whole number" },
    { GOOD .. "event_tracking_account_id: 123\n", "'event_tracking_key' is missing" },
    { GOOD .. "event_tracking_key: k\n", "'event_tracking_account_id' is missing" },
    { GOOD .. "api_ky: x\n", "unknown config field 'api_ky'" },
    { GOOD .. "consent: {default_policy: maybe}\n", "consent.default_policy must be 'allow' or 'deny'" },
    { GOOD .. "events: {\"X\": {enabled: yes please}}\n", "must be {enabled: true}" },
    { '{"name":"AC","variant":"gold","config":{"api_url":"https://a.api-us1.com","api_key":"k"}}', "unknown variant 'gold'" },
    { '{"api_url": "https://a.api-us1.com", "api_key": }', "invalid JSON" },
    { "api_url: [1, 2\n", "invalid YAML" },
    { "- just\n- a list\n", "must be a map" },
  }
  for _, c in ipairs(bad) do
    it("rejects: " .. c[2], function()
      local e, err = check(c[1])
      assert.is_nil(e)
      assert.matches(c[2], err, 1, true)
      assert.matches("^config", err)   -- names the config source
    end)
  end

  describe("unknown keys at any depth", function()
    -- each typo is an error with the config's name, the line and the keys known there
    local function rejects(text, line, wanted)
      local e, err = check(text)
      assert.is_nil(e)
      assert.matches("^config:" .. line .. ": ", err)
      for _, w in ipairs(wanted) do assert.matches(w, err, 1, true) end
      return err
    end

    it("a top-level typo, with every accepted key listed", function()
      local err = rejects(GOOD .. "\nevent_tracking_ky: k\n", 4, { "unknown config field 'event_tracking_ky'",
        "did you mean 'event_tracking_key'?" })
      -- every field of the blueprint, every section and the install body's keys
      for _, k in ipairs({ "api_url", "api_key", "event_tracking_account_id", "event_tracking_key",
                           "event_tracking_url", "consent_field_id", "events", "consent", "name", "variant",
                           "config", "delivery_mode" }) do
        assert.matches("[ :,]" .. k .. "[,;)]", err)
      end
    end)

    it("consent.default_polcy (it would leave the default deny in force)", function()
      rejects(GOOD .. "consent:\n  default_polcy: allow\n", 4,
        { "unknown key 'default_polcy' in 'consent' (known keys: default_policy)", "did you mean 'default_policy'?" })
      rejects(GOOD .. "consent: {default_polcy: allow}\n", 3, { "'default_polcy'" })
    end)

    it("events.NAME.enabld", function()
      rejects(GOOD .. 'events:\n  "Webinar Registered": {enabld: true}\n', 4,
        { "unknown key 'enabld' in events.'Webinar Registered' (known keys: enabled)", "did you mean 'enabled'?" })
    end)

    it("a typo inside an install body's config, in pretty-printed JSON", function()
      local err = rejects('{\n  "name": "AC",\n  "variant": "default",\n  "config": {\n    "api_url": "https://a.api-us1.com",\n'
        .. '    "api_kye": "k"\n  },\n  "delivery_mode": "server_side"\n}\n', 6,
        { "unknown config field 'api_kye' in 'config'", "did you mean 'api_key'?", "sections: events, consent" })
      for _, k in ipairs({ "api_url", "api_key", "event_tracking_account_id", "event_tracking_key",
                           "event_tracking_url", "consent_field_id" }) do
        assert.matches("[ :,]" .. k .. "[,;)]", err)
      end
    end)

    it("a typo at the top of an install body, and in its consent and events", function()
      rejects('{"name":"AC","config":{"api_url":"https://a.api-us1.com","api_key":"k"},"consnet":{}}', 1,
        { "unknown key 'consnet' in the install body (known keys: name, variant, config, events, consent, delivery_mode)",
          "did you mean 'consent'?" })
      rejects('{"name":"AC",\n"config":{"api_url":"https://a.api-us1.com","api_key":"k"},\n"consent":{"default_polcy":"allow"}}', 3,
        { "unknown key 'default_polcy' in 'consent'" })
      rejects('{"name":"AC",\n"config":{"api_url":"https://a.api-us1.com","api_key":"k"},\n"events":{"X":{"enabled":true,"on":1}}}', 3,
        { "unknown key 'on' in events.'X'" })
    end)

    it("names the config file and line", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(GOOD, "consent:\n  default_polcy: allow\n")
      f:close()
      local e, err = S.core.open(S.AC, path)
      os.remove(path)
      assert.is_nil(e)
      assert.are.equal(path .. ":4: ", err:sub(1, #path + 4))
    end)

    it("no suggestion when nothing is close", function()
      local err = rejects(GOOD .. "colour: blue\n", 3, { "unknown config field 'colour'" })
      assert.is_nil(err:find("did you mean", 1, true))
    end)

    it("still accepts every section in both shapes, and the server's stored documents", function()
      assert.is_truthy(check(GOOD .. "consent: {default_policy: allow}\nevents:\n  X: {enabled: true}\n  Y: {enabled: false}\n"))
      assert.is_truthy(check(GOOD .. "name: AC\nvariant: default\ndelivery_mode: server_side\n"))
      assert.is_truthy(check('{"name":"AC","variant":"default","config":{"api_url":"https://a.api-us1.com","api_key":"k"},'
        .. '"events":{"X":{"enabled":true}},"consent":{"default_policy":"allow"},"delivery_mode":"server_side"}'))
      -- what the server stores (registry.c), with the variant it adds before validating
      assert.is_truthy(check('{"config":{"api_url":"https://a.api-us1.com","api_key":"k"},"events":{},"consent":{}}'))
      assert.is_truthy(check('{"config":{"api_url":"https://a.api-us1.com","api_key":"k"},"events":{"X":{"enabled":true}},'
        .. '"consent":{"default_policy":"deny"},"variant":"default"}'))
    end)

    it("checks name, variant and delivery_mode at the top of a bare map too", function()
      rejects(GOOD .. "delivery_mode: client_side\n", 3, { "delivery_mode 'client_side' is not supported" })
      rejects(GOOD .. "variant: gold\n", 3, { "unknown variant 'gold'" })
    end)
  end)

  it("allows http:// for loopback (tests)", function()
    assert.is_truthy(check("api_url: http://127.0.0.1:8080\napi_key: k\nevent_tracking_url: http://localhost:9/event\n"))
  end)

  it("names the line of the bad field in YAML", function()
    local _, err = check("api_key: k\n\napi_url: nope\n")
    assert.matches("^config:3: ", err)
  end)

  it("never repeats a secret in an error", function()
    local _, err = check("api_url: https://acme.api-us1.com\napi_key: \"SECRET-VALUE with space\"\n")
    assert.is_nil(err:find("SECRET-VALUE", 1, true))
    assert.matches("value not shown", err, 1, true)
  end)

  it("treats an empty optional value as unset", function()
    assert.is_truthy(check(GOOD .. "event_tracking_account_id: \"\"\nevent_tracking_key: \"\"\n"))
  end)

  describe("a key written twice", function()
    -- YAML requires unique keys: before, the second `consent:` silently won
    -- and a typo in the first was never reported
    local TWICE = GOOD .. "consent:\n  default_policy: allow\nevents:\n  Order Completed: {enabled: true}\n"
      .. "consent:\n  default_polcy: deny\n"

    it("is refused with both lines, at any depth, in YAML", function()
      local _, err = check(TWICE)
      assert.are.equal("config:7: key `consent` is already set at line 3 (keys are unique: keep one)", err)
      _, err = check(GOOD .. "consent:\n  default_policy: allow\n  default_policy: deny\n")
      assert.matches("^config:5: key `default_policy` is already set at line 4", err)
    end)

    it("is refused in a JSON config too", function()
      local _, err = check('{"config":{"api_url":"https://a.api-us1.com",\n"api_key":"k",\n"api_key":"k2"}}')
      assert.matches("^config:3: key `api_key` is already set at line 2", err)
      _, err = check('{"config":{"api_url":"https://a.api-us1.com","api_key":"k","api_key":"k2"}}')
      assert.matches("^config:1: key `api_key` is set twice in the same map", err)
    end)

    it("makes dry-run exit 2 with that message", function()
      local cfg = S.tmpdir() .. "/config.yaml"
      S.write(cfg, TWICE)
      local out, err, code = S.sh(S.bin .. " dry-run " .. S.AC .. " --config " .. cfg, "")
      assert.are.equal(2, code, err)
      assert.are.equal("", out)
      assert.matches(cfg .. ":7: key `consent` is already set at line 3", err, 1, true)
    end)
  end)
end)
