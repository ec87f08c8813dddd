-- Shared helpers of the webhook blueprint, available to event.lua as the
-- global `helpers`.

local helpers = {}

-- What each event type carries besides the common fields.
helpers.PAYLOAD = {
  identify = { "traits" },
  group = { "groupId", "traits" },
  page = { "name", "properties" },
  screen = { "name", "properties" },
  track = { "event", "properties" },
}

-- The envelope every receiver gets: the event's identity and its payload,
-- copied as they are (absent fields are left out).
function helpers.envelope(event, ctx)
  local body = {
    type = event.type,
    messageId = event.messageId or event.message_id or event.event_id,
    userId = event.userId or event.user_id,
    anonymousId = event.anonymousId or event.anonymous_id,
    timestamp = event.timestamp,
  }
  for _, key in ipairs(helpers.PAYLOAD[event.type]) do body[key] = event[key] end
  return body
end

-- The signature header, when the config has a signing secret: the core
-- computes the HMAC of the exact body when sending (Lua never sees the
-- secret); dry-run shows what it would be computed from.
function helpers.signature(ctx)
  local sig = ctx.hmac_sha256("signing_secret")   -- nil without a secret
  if not sig then return {} end
  return { [ctx.config.signature_header] = sig }
end

-- Every event of a batch gets the answer's result: 2xx delivered, 408, 429
-- and 5xx sent again, anything else a failure naming the status.
function helpers.batch_result(ctx, answer)
  local status = answer.status
  if status >= 200 and status < 300 then return ctx.delivered() end
  if status == 408 or status == 429 or status >= 500 then return ctx.retry("HTTP " .. status) end
  return ctx.failed("the endpoint answered HTTP " .. status)
end

return helpers
