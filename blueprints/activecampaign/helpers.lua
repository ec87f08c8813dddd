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

-- A URL on the account's API: api_url without its trailing slashes and
-- without an "/api/3" pasted with it (Settings > Developer shows the URL
-- bare, but copies of it often carry the version), then path.
local api_bases = {}   -- api_url -> base, worked out once per account
function helpers.api(ctx, path)
  local url = ctx.config.api_url
  if not api_bases[url] then
    local base = url:gsub("/+$", "")
    base = base:gsub("/[Aa][Pp][Ii]/3$", "")
    api_bases[url] = base
  end
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

-- Event Tracking must be switched on in the account for /event to work
-- (track-event), and the reference does not say what /event answers while
-- it is off: it may accept the event and drop it.  So tracked events are
-- preceded by a look at the switch (retrieve-event-tracking-status), once
-- per integration every 10 minutes (`once`; skipped while fresh); while it
-- is off, blueprint.yaml's responses: rule makes the event a dead letter
-- that says so, and the requests after the check are not sent.
function helpers.tracking_check(ctx)
  return { method = "GET", url = helpers.api(ctx, "/api/3/eventTracking"),
           headers = { ["Api-Token"] = ctx.secret("api_key") }, once = "event-tracking-on" }
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
-- (skipped when recently done) followed by the event; or drop.  When the
-- event earns a tag (tag_on_events), or the contact's consent is newly
-- granted and lists follow consent, the sync is a step: the tag and the
-- list status need the contact's id.
function helpers.track_event(event, ctx, event_name, data, keep)
  local email = helpers.email(event, ctx)
  if not email then return helpers.no_email(ctx) end
  local request, dropped = helpers.track(ctx, event_name, email, data, keep)
  local tag = helpers.event_tag(ctx, event.event)
  if tag and not helpers.new_tags(ctx, email, { tag })[1] then tag = nil end   -- it has it already
  local relist = ctx.config.lists and ctx.consent.state == "granted" and helpers.consent_changed(ctx, email)
  if not tag and not relist then
    if not request then return dropped end
    local sync = helpers.contact_sync(ctx, { email = email })
    sync.once = helpers.synced_key(email)
    return { helpers.tracking_check(ctx), sync, request }
  end
  local id = helpers.synced_contact_id(ctx, { email = email })
  if tag then helpers.add_tags(ctx, id, email, { tag }) end
  local out = relist and helpers.subscribe_requests(ctx, email, id) or {}
  if relist then helpers.remember_consent(ctx, email, event) end
  if request then
    table.insert(out, 1, helpers.tracking_check(ctx))
    out[#out + 1] = request
  end
  return out
end

-- ---- Contact depth: lists, tags, custom fields, Deep Data -------------------
-- Each is off until configured.  They need ids that exist only in
-- ActiveCampaign's answers (a contact's, a tag's, a field's), so they use
-- steps: ctx.send(request) returns the answer { status, json, body }.
-- Lookups are cached per account (ctx.cache), so once warm an identify
-- sends no lookup requests.

local DAY = 86400

local function api_request(ctx, method, path, body)
  return { method = method, url = helpers.api(ctx, path),
           headers = { ["Api-Token"] = ctx.secret("api_key") }, json = body }
end
helpers.api_request = api_request

-- The contact's id, from the contact/sync answer (the sync is a step).
function helpers.synced_contact_id(ctx, contact)
  local r = ctx.send(helpers.contact_sync(ctx, contact))
  return r.json.contact.id
end

-- ---- lists that follow consent ----
-- Status 1 re-subscribes a contact who unsubscribed (from an email's link,
-- say): the reference warns of it.  So a list's status is sent only when a
-- contact's consent changes, and an unsubscribed contact (2) is subscribed
-- again only when they granted consent after unsubscribing, with sourceid 4
-- (the reference's "re-subscribing" source).  The consent a contact's lists
-- last followed is remembered per contact, durably (a restart must not send
-- every list status again): { state, at = when it was seen (the event's
-- timestamp, seconds), ours = we unsubscribed them on a denial }.
local LISTS_TTL = 365 * DAY
local function lists_key(email) return "lists:" .. email end

-- A list id as ActiveCampaign writes it ("1"), whether configured 1 or "1".
local function list_id(v) return tostring(math.tointeger(tonumber(v)) or v) end

local function list_request(ctx, list, contact_id, status, sourceid)
  return api_request(ctx, "POST", "/api/3/contactLists",
    { contactList = { list = list, contact = contact_id, status = status, sourceid = sourceid } })
end

-- Status 2 for every configured list (consent denied: unsubscribing never harms).
function helpers.unsubscribe_requests(ctx, contact_id)
  local out = {}
  for _, list in ipairs(ctx.config.lists or {}) do out[#out + 1] = list_request(ctx, list, contact_id, 2) end
  return out
end

-- Seconds since 1970 of an ISO 8601 time with its zone ("2024-05-01T12:00:00Z",
-- "2021-05-12T11:10:06-05:00"); nil for anything else (a time without a zone
-- is not known well enough to compare with an unsubscribe).
function helpers.epoch(text)
  if type(text) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, zone = text:match("^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)%.?%d*(.*)$")
  if not y then return nil end
  local offset
  if zone == "Z" or zone == "z" then offset = 0
  else
    local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(zh) * 3600 + tonumber(zm) * 60) * (sign == "-" and -1 or 1)
  end
  y, mo = tonumber(y), tonumber(mo)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) - offset
end

-- Has this contact's consent changed since its lists last followed it?
function helpers.consent_changed(ctx, email)
  local seen = ctx.cache.get(lists_key(email))
  return not seen or seen.state ~= ctx.consent.state
end

-- Remember the consent the lists now follow (written when the run
-- completes; kept across restarts once the event is delivered).
function helpers.remember_consent(ctx, email, event, ours)
  local seen = ctx.cache.get(lists_key(email)) or {}
  if ours == nil and ctx.consent.state ~= "granted" then ours = seen.ours end
  ctx.cache.set(lists_key(email), { state = ctx.consent.state, at = helpers.epoch(event.timestamp), ours = ours or nil },
                { ttl = LISTS_TTL, durable = true })
end

-- May a list the contact unsubscribed from (membership m) be subscribed
-- again?  Only when consent was granted after that unsubscribe: the
-- contact was last seen without consent (seen.at) after it (m.udate).
-- Unknown either way: no.
local function reconsented(seen, m)
  if not seen or seen.state == "granted" then return false end
  local unsubscribed = helpers.epoch(m.udate)
  return seen.at ~= nil and unsubscribed ~= nil and unsubscribed <= seen.at
end

-- The contactLists requests for a contact whose consent is now granted: a
-- step reads its list statuses (GET /contacts/{id}/contactLists); a list it
-- is not on is subscribed, one it unsubscribed from only on re-consent
-- (sourceid 4); subscribed, unconfirmed (0) and bounced (3) stay as they are.
-- When we unsubscribed it ourselves on a denial, the contact withdrew and
-- has granted again since, after any unsubscribe of its own that came
-- before the withdrawal: every list is subscribed again (sourceid 4)
-- without reading them, a request saved.
function helpers.subscribe_requests(ctx, email, contact_id)
  local seen = ctx.cache.get(lists_key(email))
  if seen and seen.ours and seen.state ~= "granted" then
    local out = {}
    for _, list in ipairs(ctx.config.lists or {}) do out[#out + 1] = list_request(ctx, list, contact_id, 1, 4) end
    return out
  end
  local r = ctx.send(api_request(ctx, "GET", "/api/3/contacts/" .. contact_id .. "/contactLists"))
  local have = {}
  for _, m in ipairs(r.json and r.json.contactLists or {}) do have[list_id(m.list)] = m end
  local out = {}
  for _, list in ipairs(ctx.config.lists or {}) do
    local m = have[list_id(list)]
    if not m then
      out[#out + 1] = list_request(ctx, list, contact_id, 1)
    elseif tonumber(m.status) == 2 then
      if reconsented(seen, m) then
        out[#out + 1] = list_request(ctx, list, contact_id, 1, 4)
      else
        ctx.log("list " .. list_id(list) .. " left unsubscribed: the contact unsubscribed ("
          .. tostring(m.udate) .. ") and did not grant consent after that")
      end
    end
  end
  return out
end

-- A tag's id: cached, else looked up, else created.  Tag names are unique
-- (case-insensitively): a 422 on create means another delivery created it
-- meanwhile, so it is looked up again.  Concurrent events share one lookup
-- and one create (opts.cache), so a new tag is created once per account.
-- The lookup asks for the name exactly (filters[search][eq], documented
-- on retrieve-all-tags; ?search= matches every name that contains it) and
-- pages through the answer (limit 100, offset) until the name is found, so
-- many similar names never hide it, whether or not the filter is applied.
local function find_tag(ctx, name, share)
  local offset, total = 0, 1
  while offset < total do
    local r = ctx.send(api_request(ctx, "GET", "/api/3/tags?filters[search][eq]=" .. ctx.urlencode(name)
                         .. "&limit=100&offset=" .. offset),
                       share and offset == 0 and { cache = "tag lookup " .. name:lower(), ttl = 60 } or nil)
    for _, t in ipairs(r.json.tags or {}) do
      if t.tag:lower() == name:lower() then return t.id end
    end
    total = tonumber(r.json.meta and r.json.meta.total) or 0
    offset = offset + 100
  end
end

function helpers.tag_id(ctx, name)
  local key = "tag:" .. name:lower()
  local id = ctx.cache.get(key) or find_tag(ctx, name, true)
  if not id then
    local r = ctx.send(api_request(ctx, "POST", "/api/3/tags",
                         { tag = { tag = name, tagType = "contact", description = "" } }),
                       { cache = "tag create " .. name:lower(), accept = { 422 } })
    id = r.status == 422 and find_tag(ctx, name, false) or (r.json.tag and r.json.tag.id)
    if not id then error("tag '" .. name .. "' could not be created: " .. r.body) end
  end
  ctx.cache.set(key, id, DAY)
  return id
end

-- traits.tags as a list: an array, or a comma-separated string.
function helpers.tag_names(value)
  local names = {}
  if type(value) == "string" then
    for name in value:gmatch("[^,]+") do
      name = name:match("^%s*(.-)%s*$")
      if name ~= "" then names[#names + 1] = name end
    end
  elseif value then
    for _, name in ipairs(value) do
      if type(name) == "string" and name ~= "" then names[#names + 1] = name end
    end
  end
  return names
end

-- The tags a contact is known to have (lower-cased names), per contact for
-- a day like other lookups: a warm identify with the same tags sends none.
local function tags_key(email) return "tags:" .. email end

-- The names among `names` the contact is not known to have.
function helpers.new_tags(ctx, email, names)
  local known, out = ctx.cache.get(tags_key(email)) or {}, {}
  for _, name in ipairs(names) do
    if not known[name:lower()] then out[#out + 1] = name end
  end
  return out
end

-- Add tags to a contact and remember them.  A tag it already has is
-- answered 201 (or, the reference is silent, refused with 422): fine.
function helpers.add_tags(ctx, contact_id, email, names)
  if not names[1] then return end
  local known = ctx.cache.get(tags_key(email)) or {}
  for _, name in ipairs(names) do
    ctx.send(api_request(ctx, "POST", "/api/3/contactTags",
               { contactTag = { contact = contact_id, tag = helpers.tag_id(ctx, name) } }),
             { accept = { 422 } })
    known[name:lower()] = true
  end
  ctx.cache.set(tags_key(email), known, DAY)
end

-- The tag an event name earns (tag_on_events), or nil.
function helpers.event_tag(ctx, event_name)
  local map = ctx.config.tag_on_events
  return map and event_name and map[event_name]
end

-- Custom fields by title and by perstag (lower case) -> { id, type }, read
-- page by page from /api/3/fields once per account.
function helpers.custom_fields(ctx)
  local fields = ctx.cache.get("fields")
  if fields then return fields end
  fields = {}
  local offset, total = 0, 1
  while offset < total do
    local r = ctx.send(api_request(ctx, "GET", "/api/3/fields?limit=100&offset=" .. offset),
                       { cache = "fields " .. offset, ttl = 3600 })
    for _, f in ipairs(r.json.fields or {}) do
      local entry = { id = f.id, type = f.type }
      fields[f.title:lower()] = entry
      if f.perstag and f.perstag ~= "" then fields[f.perstag:lower()] = entry end
    end
    total = tonumber(r.json.meta and r.json.meta.total) or 0
    offset = offset + 100
  end
  ctx.cache.set("fields", fields, 3600)
  return fields
end

-- A trait value written the way the field's type wants it.
local function day(v) return type(v) == "number" and os.date("!%Y-%m-%d", v) or tostring(v):sub(1, 10) end
local FIELD_VALUE = {
  date = day,
  datetime = function(v) return type(v) == "number" and os.date("!%Y-%m-%dT%H:%M:%SZ", v) or tostring(v) end,
  checkbox = function(v) return "||" .. table.concat(helpers.tag_names(v), "||") .. "||" end,
}
FIELD_VALUE.listbox = FIELD_VALUE.checkbox

function helpers.field_value(field_type, value)
  if type(value) == "boolean" then return value and "true" or "false" end
  local write = FIELD_VALUE[field_type]
  return write and write(value) or tostring(value)
end

-- The contact's custom field values for the configured traits the event
-- carries, as contact/sync takes them inline ({ field, value }, sorted by
-- field id): one request for the contact and all its fields.
function helpers.field_values(ctx, traits)
  local map = ctx.config.custom_fields
  if not map then return {} end
  local fields, out = helpers.custom_fields(ctx), {}
  for trait, name in pairs(map) do
    local value = ctx.get(traits, trait)
    local field = fields[name:lower()]
    if value ~= nil and value ~= "" and not field then
      error("custom_fields: no custom field titled or tagged '" .. name .. "' in this account (for trait " .. trait .. ")")
    end
    if value ~= nil and value ~= "" then
      out[#out + 1] = { field = field.id, value = helpers.field_value(field.type, value) }
    end
  end
  table.sort(out, function(a, b) return tonumber(a.field) < tonumber(b.field) end)
  return out
end

-- An amount in cents, exactly: "19.99" -> 1999 (Deep Data's unit).
function helpers.cents(value)
  if value == nil then return nil end
  local whole, frac = tostring(value):match("^%s*(-?%d*)%.?(%d*)%s*$")
  if not whole then error("not an amount: " .. tostring(value)) end
  frac = (frac .. "00"):sub(1, 2)
  local sign = whole:sub(1, 1) == "-" and -1 or 1
  return sign * (math.abs(tonumber(whole) or 0) * 100 + tonumber(frac))
end

-- ---- Dates ----------------------------------------------------------------

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
-- days_from_civil): UTC arithmetic, whatever the process's time zone.
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m > 2 and m - 3 or m + 9) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

-- Unix seconds of an ISO 8601 time ("2024-05-01T16:00:00.123+02:00", "…Z",
-- a bare date) or of a number (seconds, or milliseconds when that large);
-- nil when it is neither.
function helpers.unix_time(v)
  if type(v) == "number" then return math.floor(v >= 1e11 and v / 1000 or v) end
  if v == nil then return nil end
  local s = tostring(v)
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  local h, mi, sec, zone = 0, 0, 0, ""
  if rest ~= "" then
    h, mi, sec, zone = rest:match("^[Tt ](%d%d):(%d%d):?(%d*)%.?%d*(.*)$")
    if not h then return nil end
  end
  local offset = 0
  if zone ~= "" and zone ~= "Z" and zone ~= "z" then
    local sign, oh, om = zone:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then sign, oh = zone:match("^([+-])(%d%d)$"); om = "0" end
    if not sign then return nil end
    offset = (sign == "-" and -1 or 1) * (tonumber(oh) * 3600 + tonumber(om) * 60)
  end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
      + tonumber(h) * 3600 + tonumber(mi) * 60 + (tonumber(sec) or 0) - offset
end

-- ISO 8601 in UTC with an explicit offset, as the reference's examples write
-- dates ("2016-09-13T17:41:39-04:00").
function helpers.iso8601(t) return os.date("!%Y-%m-%dT%H:%M:%S", t) .. "+00:00" end

-- ---- Deep Data --------------------------------------------------------------

-- An order is historical (source 0: no "makes a purchase" automation, not on
-- the dashboard) when Signal received it more than this after it happened:
-- a backfill or an import, not a purchase made just now.
helpers.HISTORICAL_AFTER_S = 24 * 3600

-- The id of a Deep Data resource: looked up with GET path?filters (the
-- reference's documented way to find one), else created with POST.  `share`
-- names the resource per account: concurrent events share one lookup and one
-- create (opts.cache), so a repeat is never created by a race.  The
-- reference documents no answer for a repeated externalid: a 422 `duplicate`
-- (what some accounts answer) means another delivery made it, looked up
-- again; a vendor that accepted the repeat is never asked twice, because
-- the lookup comes first.  Creates answer 201, a connection 200: any 2xx.
local function ensure(ctx, path, filters, kind, body, share)
  local query = {}
  for _, k in ipairs(filters) do query[#query + 1] = "filters[" .. k[1] .. "]=" .. ctx.urlencode(k[2]) end
  local lookup = api_request(ctx, "GET", path .. "?" .. table.concat(query, "&"))
  local list = kind .. "s"
  local r = ctx.send(lookup, { cache = share .. " lookup", ttl = 60 })
  local found = r.json[list] and r.json[list][1]
  if found then return found.id end
  r = ctx.send(api_request(ctx, "POST", path, { [kind] = body }), { cache = share .. " create", accept = { 422 } })
  if r.status ~= 422 then return r.json[kind].id end
  r = ctx.send(lookup)
  found = r.json[list] and r.json[list][1]
  if not found then error(kind .. " refused and not found: " .. r.body) end
  return found.id
end

function helpers.deep_data_connection(ctx)
  local id = ctx.cache.get("connection")
  if id then return id end
  id = ensure(ctx, "/api/3/connections", { { "service", "signal" }, { "externalid", "signal" } }, "connection",
              { service = "signal", externalid = "signal", name = ctx.config.deep_data_store,
                logoUrl = "", linkUrl = "" }, "connection")
  ctx.cache.set("connection", id, DAY)
  return id
end

function helpers.deep_data_customer(ctx, connection, email)
  local key = "customer:" .. email
  local id = ctx.cache.get(key)
  if id then return id end
  id = ensure(ctx, "/api/3/ecomCustomers", { { "email", email }, { "connectionid", connection } }, "ecomCustomer",
              { connectionid = connection, externalid = email, email = email,
                acceptsMarketing = ctx.consent.state == "granted" and "1" or "0" }, key)
  ctx.cache.set(key, id, DAY)
  return id
end

-- When the order was placed: the event's timestamp, else originalTimestamp,
-- else receivedAt (Signal's envelope); unix seconds, or nil.
local function order_time(ctx, event)
  for _, key in ipairs({ "timestamp", "originalTimestamp", "receivedAt" }) do
    local t = helpers.unix_time(ctx.get(event, key))
    if t then return t end
  end
end

-- totalPrice "including tax and shipping" (create-order): the e-commerce
-- spec's `total`; else `revenue` (which excludes both) plus `tax` and
-- `shipping`; nil when the order has neither total nor revenue.
local function order_total(ctx, p)
  local total = ctx.get(p, "total")
  if total ~= nil then return helpers.cents(total) end
  local revenue = ctx.get(p, "revenue")
  if revenue == nil then return nil end
  return helpers.cents(revenue) + (helpers.cents(ctx.get(p, "tax")) or 0) + (helpers.cents(ctx.get(p, "shipping")) or 0)
end

-- The order's products (name, price, quantity and externalid are required
-- for each).  A product without a name is named by its sku, else its id;
-- one with none of the three is left out, with a log line.
local function order_products(ctx, p)
  local out = ctx.array({})
  for i, item in ipairs(ctx.get(p, "products") or {}) do
    local id = ctx.get(item, "product_id") or ctx.get(item, "sku") or ctx.get(item, "id")
    local name = ctx.get(item, "name")
    if name == "" then name = nil end
    name = name or ctx.get(item, "sku") or id
    if name == nil or name == "" then
      ctx.log("Deep Data: product " .. i .. " has no name, sku or product_id: left out of the order")
    else
      out[#out + 1] = {
        externalid = tostring(id or i), name = tostring(name),
        price = helpers.cents(ctx.get(item, "price") or 0),
        quantity = tonumber(ctx.get(item, "quantity")) or 1,
        category = ctx.get(item, "category"), sku = ctx.get(item, "sku"),
      }
    end
  end
  return out
end

-- Order Completed as a Deep Data order: connection, customer, then the order
-- (amounts in cents).  Once per order id: the documented lookup
-- (filters[externalid] and filters[connectionid]) comes before the create,
-- and concurrent deliveries of one order share that lookup and create.
-- What cannot be sent is logged and skipped: the purchase still goes to
-- Event Tracking (order_completed.lua), and so it does when ActiveCampaign
-- refuses the order (the log line gives its answer).
function helpers.deep_data_order(event, ctx, email)
  local p = event.properties
  local order_id = ctx.get(p, "order_id")
  if order_id == nil or order_id == "" then
    return ctx.log("Deep Data skipped: the order needs properties.order_id")
  end
  order_id = tostring(order_id)
  local placed = order_time(ctx, event)
  if not placed then
    return ctx.log("Deep Data skipped: the order needs a date (timestamp, originalTimestamp or receivedAt, ISO 8601)")
  end
  local total = order_total(ctx, p)
  if not total then
    return ctx.log("Deep Data skipped: the order needs properties.total (or revenue, tax and shipping)")
  end
  local connection = helpers.deep_data_connection(ctx)
  local key = "order:" .. connection .. ":" .. order_id
  if ctx.cache.get(key) then return end
  local customer = helpers.deep_data_customer(ctx, connection, email)
  local received = helpers.unix_time(ctx.get(event, "receivedAt"))
  local order = {
    externalid = order_id, orderNumber = order_id, email = email,
    source = (received and received - placed > helpers.HISTORICAL_AFTER_S) and 0 or 1,
    totalPrice = total,
    shippingAmount = helpers.cents(ctx.get(p, "shipping")),
    taxAmount = helpers.cents(ctx.get(p, "tax")),
    discountAmount = helpers.cents(ctx.get(p, "discount")),
    currency = tostring(ctx.get(p, "currency") or "USD"):upper(),
    connectionid = connection, customerid = customer, externalCreatedDate = helpers.iso8601(placed),
  }
  local products = order_products(ctx, p)
  if #products > 0 then order.orderProducts = products end   -- optional in the reference
  local lookup = api_request(ctx, "GET", "/api/3/ecomOrders?filters[externalid]=" .. ctx.urlencode(order_id)
    .. "&filters[connectionid]=" .. ctx.urlencode(connection))
  local r = ctx.send(lookup, { cache = key .. " lookup", ttl = 60 })
  if not (r.json.ecomOrders and r.json.ecomOrders[1]) then
    r = ctx.send(api_request(ctx, "POST", "/api/3/ecomOrders", { ecomOrder = order }),
                 { cache = key .. " create", accept = { 422 } })
    if r.status == 422 and not (ctx.send(lookup).json.ecomOrders or {})[1] then
      return ctx.log("Deep Data refused the order (HTTP 422): " .. r.body)
    end
  end
  ctx.cache.set(key, true, DAY)
end

-- ---- identify's contact, alone or in a bulk import ----

-- The contact an identify names: email, first and last name, phone from the
-- traits; absent fields stay absent (nil is left out), never sent as "".
-- nil without an email.  identify.lua and identify_batch.lua both use it.
function helpers.contact(event, ctx)
  local email = helpers.email(event, ctx)
  if not email then return nil end
  local traits = event.traits
  local contact = {
    email = email,
    firstName = ctx.get(traits, "first_name") or ctx.get(traits, "firstName"),
    lastName = ctx.get(traits, "last_name") or ctx.get(traits, "lastName"),
    phone = ctx.get(traits, "phone"),
  }
  for field, value in pairs(contact) do
    if value == "" then contact[field] = nil end
  end
  return contact
end

-- The custom field values of a contact ({ field, value }), the consent
-- field first when configured (it receives the consent's state).
function helpers.contact_values(ctx, traits, consent)
  local values = helpers.field_values(ctx, traits)
  local consent_field = ctx.config.consent_field_id
  if consent_field then table.insert(values, 1, { field = consent_field, value = consent.state }) end
  return values
end

-- ---- bulk import: many identifies in one request (identify_batch.lua) ----
-- POST /api/3/import/bulk_import takes up to 250 contacts and imports them
-- later; GET /api/3/import/info?batchId= says when it is done, with the
-- emails it could not import (docs/activecampaign.md, Bulk import).

-- One contact of a bulk import: the same email, name and phone as identify
-- (helpers.contact), custom fields by id, tags by name (created when
-- missing: no lookups), lists by consent (granted subscribes, which never
-- re-subscribes a contact who unsubscribed; denied unsubscribes; unknown
-- leaves them).  nil without an email.
function helpers.bulk_contact(event, ctx, consent)
  local c = helpers.contact(event, ctx)
  if not c then return nil end
  local traits = event.traits
  local bulk = { email = c.email, first_name = c.firstName, last_name = c.lastName, phone = c.phone }
  local fields = {}
  for _, v in ipairs(helpers.contact_values(ctx, traits, consent)) do
    fields[#fields + 1] = { id = math.tointeger(tonumber(v.field)) or v.field, value = v.value }
  end
  if fields[1] then bulk.fields = fields end
  local tags = ctx.config.tags and helpers.tag_names(ctx.get(traits, "tags")) or {}
  if tags[1] then bulk.tags = tags end
  local lists = {}
  for _, list in ipairs(ctx.config.lists or {}) do lists[#lists + 1] = { listid = math.tointeger(tonumber(list)) or list } end
  if lists[1] and consent.state == "granted" then bulk.subscribe = lists end
  if lists[1] and consent.state == "denied" then bulk.unsubscribe = lists end
  return bulk
end

-- The import request for these contacts, nil when there are none.
function helpers.bulk_import(ctx, contacts)
  if not contacts[1] then return nil end
  return api_request(ctx, "POST", "/api/3/import/bulk_import", { contacts = contacts })
end

-- The events' results from an answer to the import or to its status:
-- contacts[k] came from event which[k]; results holds the events judged
-- before (no email).  Each contact in "failure" fails; the others are
-- delivered once the import is completed (import/info lists only the
-- contacts it created in "success": an updated one is in neither list).
function helpers.bulk_results(ctx, answer, contacts, which, results)
  local function each(result_of)
    for k, i in ipairs(which) do results[i] = result_of(k, contacts[k]) end
    return results
  end
  if not answer then return results end   -- no request: every event has its result
  local json = answer.json or {}
  if answer.status == 400 and json.failureReasons then
    -- nothing was imported: the contacts it names fail, the others go again
    local reasons = json.failureReasons
    return each(function(k)
      local why = reasons[tostring(k - 1)] or reasons[k - 1]
      if not why then return ctx.retry("sent again: ActiveCampaign refused other contacts of the import") end
      return ctx.failed("ActiveCampaign refused the contact: " .. table.concat(ctx.totable(why), "; "))
    end)
  end
  if answer.status == 429 or answer.status >= 500 then
    return each(function() return ctx.retry("HTTP " .. answer.status) end)
  end
  if answer.status >= 300 then
    return each(function() return ctx.failed("HTTP " .. answer.status .. ": " .. tostring(json.message or answer.body)) end)
  end
  if json.batchId then   -- queued: ask for its status
    return ctx.later(api_request(ctx, "GET", "/api/3/import/info?batchId=" .. ctx.urlencode(json.batchId)))
  end
  if json.status == "completed" then
    local failed = {}
    for _, email in ipairs(json.failure or {}) do failed[tostring(email):lower()] = true end
    return each(function(_, contact)
      if failed[contact.email] then return ctx.failed("ActiveCampaign could not import the contact (import/info failure)") end
      return ctx.delivered()
    end)
  end
  if json.status == "failed" or json.status == "interrupted" then
    -- ActiveCampaign will not retry it; sending the contacts again is safe
    -- (an import updates, and never re-subscribes)
    return each(function() return ctx.retry("the bulk import " .. json.status .. " at ActiveCampaign") end)
  end
  -- waiting, claimed, active, or false (asked too soon): ask again later
  return ctx.later({ method = "GET", url = answer.url, headers = { ["Api-Token"] = ctx.secret("api_key") } })
end

return helpers
