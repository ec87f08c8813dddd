-- track "Order Completed" -> Event Tracking "purchase" with order id,
-- revenue (or total) and currency.  Ids and amounts pass through exactly.
return function(event, ctx)
  local p = event.properties
  return helpers.track_event(event, ctx, "purchase", {
    order_id = ctx.get(p, "order_id"),
    revenue = ctx.get(p, "revenue") or ctx.get(p, "total"),
    currency = ctx.get(p, "currency"),
  }, { "order_id", "revenue", "currency" })
end
