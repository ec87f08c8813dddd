-- identify, many at once: one bulk import of their contacts (blueprint.yaml
-- batch:, when identifies of one account pile up).  The contact rules are
-- identify.lua's (helpers.contact); lists follow each event's consent.
return function(events, ctx)
  local contacts, which, results = {}, {}, {}
  for i, event in ipairs(events) do
    local ok, contact = pcall(helpers.bulk_contact, event, ctx, ctx.consents[i])
    if not ok then
      results[i] = ctx.failed(tostring(contact))   -- e.g. a trait naming no custom field
    elseif not contact then
      results[i] = helpers.no_email(ctx)
    else
      contacts[#contacts + 1] = contact
      which[#contacts] = i
    end
  end
  return helpers.bulk_import(ctx, contacts), function(answer)
    return helpers.bulk_results(ctx, answer, contacts, which, results)
  end
end
