-- page -> Event Tracking "page_view" with the page URL and title.
return function(event, ctx)
  return helpers.track_event(event, ctx, "page_view", {
    url = ctx.get(event, "context.page.url") or ctx.get(event, "properties.url"),
    title = ctx.get(event, "context.page.title") or ctx.get(event, "properties.title"),
    name = event.name,
  }, { "url" })
end
