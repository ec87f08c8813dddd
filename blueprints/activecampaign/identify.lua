-- identify -> contact upsert: POST {api_url}/api/3/contact/sync
-- (creates the contact or updates the one with that email).  With lists,
-- tags or custom fields configured, the sync is a step whose answer gives
-- the contact's id, then: list status by consent, tags, field values.
return function(event, ctx)
  local email = helpers.email(event, ctx)
  if not email then return helpers.no_email(ctx) end

  local traits = event.traits
  local contact = {
    email = email,
    firstName = ctx.get(traits, "first_name") or ctx.get(traits, "firstName"),
    lastName = ctx.get(traits, "last_name") or ctx.get(traits, "lastName"),
    phone = ctx.get(traits, "phone"),
  }
  -- absent fields stay absent (nil is left out), never sent as ""
  for field, value in pairs(contact) do
    if value == "" then contact[field] = nil end
  end

  local consent_field = ctx.config.consent_field_id
  if consent_field then
    contact.fieldValues = { { field = consent_field, value = ctx.consent.state } }
  end

  if not (ctx.config.lists or ctx.config.tags or ctx.config.custom_fields) then
    local sync = helpers.contact_sync(ctx, contact)
    sync.marks = helpers.synced_key(email)   -- later events need not sync again
    return sync
  end

  local id = helpers.synced_contact_id(ctx, contact)
  if ctx.config.tags then helpers.add_tags(ctx, id, helpers.tag_names(ctx.get(traits, "tags"))) end
  local requests = helpers.list_requests(ctx, id, ctx.consent.state)
  for _, r in ipairs(helpers.field_requests(ctx, id, traits)) do requests[#requests + 1] = r end
  helpers.remember_consent(ctx, email)
  return requests
end
