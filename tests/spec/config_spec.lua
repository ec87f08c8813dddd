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
end)
