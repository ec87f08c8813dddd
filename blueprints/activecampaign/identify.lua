-- identify -> contact upsert: POST {api_url}/api/3/contact/sync
-- (creates the contact or updates the one with that email), custom field
-- values inline.  When the contact's consent changed (lists) or it has
-- tags it is not known to have, the sync is a step whose answer gives the
-- contact's id, then: its tags, its list statuses.
return function(event, ctx)
  local contact = helpers.contact(event, ctx)
  if not contact then return helpers.no_email(ctx) end
  local email, traits = contact.email, event.traits

  -- custom field values go inline, in the sync itself (sync-a-contacts-data)
  local values = helpers.contact_values(ctx, traits, ctx.consent)
  if values[1] then contact.fieldValues = values end

  -- what else this contact needs: list statuses when its consent changed
  -- (subscribing when granted; unknown leaves lists as they are), tags it
  -- is not known to have.  Without either, the sync is all: no step.
  local relist = ctx.config.lists and helpers.consent_changed(ctx, email)
  local subscribe = relist and ctx.consent.state == "granted"
  local tags = ctx.config.tags and helpers.new_tags(ctx, email, helpers.tag_names(ctx.get(traits, "tags"))) or {}
  if not subscribe and not tags[1] then
    if relist then helpers.remember_consent(ctx, email, event) end
    local sync = helpers.contact_sync(ctx, contact)
    sync.marks = helpers.synced_key(email)   -- later events need not sync again
    return sync
  end

  local id = helpers.synced_contact_id(ctx, contact)
  helpers.add_tags(ctx, id, email, tags)
  local requests = subscribe and helpers.subscribe_requests(ctx, email, id) or {}
  if relist then helpers.remember_consent(ctx, email, event) end   -- after: the lists read what came before
  return requests
end
