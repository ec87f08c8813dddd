-- track "Product Viewed" -> Event Tracking "product_viewed".
return function(event, ctx)
  local p = event.properties
  return helpers.track_event(event, ctx, "product_viewed", {
    product_id = ctx.get(p, "product_id") or ctx.get(p, "id"),
    name = ctx.get(p, "name"),
    price = ctx.get(p, "price"),
    currency = ctx.get(p, "currency"),
  }, { "product_id" })
end
