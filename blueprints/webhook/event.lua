-- Every event type -> one POST of its JSON envelope to the configured URL.
return function(event, ctx)
  return {
    method = "POST",
    url = ctx.config.url,
    headers = helpers.signature(ctx),
    json = helpers.envelope(event, ctx),
  }
end
