-- Many events -> one POST of a JSON array of their envelopes (batch_events
-- on, blueprint.yaml batch:).  Plain HTTP decides for all of them at once.
return function(events, ctx)
  local envelopes = {}
  for i, event in ipairs(events) do envelopes[i] = helpers.envelope(event, ctx) end
  local request = { method = "POST", url = ctx.config.url, headers = helpers.signature(ctx), json = ctx.array(envelopes) }
  return request, function(answer)
    local results = {}
    for i in ipairs(events) do results[i] = helpers.batch_result(ctx, answer) end
    return results
  end
end
