-- What install and PATCH check without sending data (blueprint.yaml
-- verify:): that the API URL answers as ActiveCampaign, that the API key is
-- accepted and, when page and track events go to Event Tracking, that it is
-- switched on.  GET /api/3/eventTracking (retrieve-event-tracking-status)
-- shows all three; without Event Tracking configured, GET /api/3/lists
-- (retrieve-all-lists) the first two.  Each answer is judged by the
-- responses: rules, as in delivery.
return function(event, ctx)
  if ctx.config.event_tracking_account_id then
    local check = helpers.tracking_check(ctx)
    check.once = nil
    return check
  end
  return helpers.api_request(ctx, "GET", "/api/3/lists?limit=1")
end
