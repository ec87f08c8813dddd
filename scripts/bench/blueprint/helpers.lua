-- Shared helpers of the ActiveCampaign blueprint, available to every mapping
-- as the global `helpers`.  Keep vendor rules here, once.

local helpers = {}

-- Event Tracking limits (docs/activecampaign.md): names of at most 32 characters;
-- eventdata is one string, kept under EVENTDATA_MAX_BYTES by dropping the
-- largest non-identifying fields first (listed under "_truncated").
helpers.EVENT_NAME_MAX = 32
helpers.EVENTDATA_MAX_BYTES = 1024

-- ActiveCampaign identifies contacts by email: traits.email, then
-- context.traits.email, then properties.email; trimmed and lower-cased.
function helpers.email(event, ctx)
  return ctx.email(ctx.get(event, "traits.email"))
      or ctx.email(ctx.get(event, "context.traits.email"))
      or ctx.email(ctx.get(event, "properties.email"))
end

function helpers.no_email(ctx)
  return ctx.drop("no email: ActiveCampaign identifies contacts by email "
    .. "(set traits.email, context.traits.email or properties.email)")
end

-- A URL on the account's API: api_url without its trailing slashes, then path.
local api_bases = {}   -- api_url -> base, worked out once per account
function helpers.api(ctx, path)
  local url = ctx.config.api_url
  api_bases[url] = api_bases[url] or url:gsub("/+$", "")
  return api_bases[url] .. path
end

-- An Event Tracking request (form-encoded; a JSON body is refused by the
-- vendor).  Returns nil and a drop when Event Tracking is not configured.
function helpers.track(ctx, event_name, email, data, keep)
  local actid = ctx.config.event_tracking_account_id
  local key = ctx.secret("event_tracking_key")
  if not actid or not key then
    return nil, ctx.drop("Event Tracking is not configured: set event_tracking_account_id and "
      .. "event_tracking_key (Website > Site Tracking > Event Tracking) to send page and track events")
  end
  data.consent = ctx.consent.state
  keep = keep or {}
  keep[#keep + 1] = "consent"
  return {
    method = "POST",
    url = ctx.config.event_tracking_url,
    form = {
      actid = actid,
      key = key,
      event = event_name,
      eventdata = ctx.json(data, { max_bytes = helpers.EVENTDATA_MAX_BYTES, keep = keep }),
      visit = ctx.json({ email = email }),
    },
  }
end

-- contact/sync for an email.  ActiveCampaign attaches tracked events to the
-- contact with that email, so the contact must exist first.
function helpers.contact_sync(ctx, contact)
  return {
    method = "POST",
    url = helpers.api(ctx, "/api/3/contact/sync"),
    headers = { ["Api-Token"] = ctx.secret("api_key") },
    json = { contact = contact },
  }
end

-- The key under which the runtime remembers that a contact was synced: a
-- request with `once = key` is skipped while the key is fresh (delivery
-- only; dry-run shows everything that would be sent when nothing is known).
function helpers.synced_key(email) return "contact:" .. email end

-- Map one track/page event: find the email, then send the contact sync
-- (skipped when recently done) followed by the event; or drop.
function helpers.track_event(event, ctx, event_name, data, keep)
  local email = helpers.email(event, ctx)
  if not email then return helpers.no_email(ctx) end
  local request, dropped = helpers.track(ctx, event_name, email, data, keep)
  if not request then return dropped end
  local sync = helpers.contact_sync(ctx, { email = email })
  sync.once = helpers.synced_key(email)
  return { sync, request }
end

return helpers
