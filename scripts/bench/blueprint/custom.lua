-- Any other track event, once enabled in the config's events: table.
-- Sent as Event Tracking named in snake_case (at most 32 characters), with
-- the event's properties as eventdata.
return function(event, ctx)
  local name = ctx.slug(event.event, helpers.EVENT_NAME_MAX)
  if not name then
    return ctx.drop("event name '" .. event.event .. "' has no letters or digits to build an "
      .. "ActiveCampaign event name from; map it in its own .lua file")
  end
  local data = {}
  for key, value in pairs(event.properties or {}) do
    data[key] = value
  end
  return helpers.track_event(event, ctx, name, data)
end
