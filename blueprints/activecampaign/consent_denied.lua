-- An event whose marketing consent is denied.  Nothing about what the
-- visitor did is sent (this mapping sees only who they are and their
-- consent), but the lists that follow consent must hear of the withdrawal:
-- the contact is unsubscribed from them (status 2).  Once per change.
return function(event, ctx)
  if not ctx.config.lists then return ctx.drop("no lists follow consent") end
  local email = helpers.email(event, ctx)
  if not email then return ctx.drop("no email to withdraw") end
  if not helpers.consent_changed(ctx, email) then return ctx.drop("withdrawal already sent") end
  -- look the contact up rather than sync it: never create a contact for a
  -- visitor who said no
  local r = ctx.send(helpers.api_request(ctx, "GET", "/api/3/contacts?email=" .. ctx.urlencode(email)))
  local contact = r.json.contacts and r.json.contacts[1]
  helpers.remember_consent(ctx, email, event, contact ~= nil)
  if not contact then return ctx.drop("no contact with that email: nothing to withdraw") end
  return helpers.unsubscribe_requests(ctx, contact.id)
end
