-- identify -> contact upsert: POST {api_url}/api/3/contact/sync
-- (creates the contact or updates the one with that email).
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

  local sync = helpers.contact_sync(ctx, contact)
  sync.marks = helpers.synced_key(email)   -- later events need not sync again
  return sync
end
