-- track "Order Completed" -> Event Tracking "purchase" with order id,
-- revenue (or total) and currency.  Ids and amounts pass through exactly.
-- With deep_data on, the order is first created in Deep Data (steps); an
-- order Deep Data cannot take is logged and skipped, never the purchase.
return function(event, ctx)
  local p = event.properties
  local email = helpers.email(event, ctx)
  if email and ctx.config.deep_data then helpers.deep_data_order(event, ctx, email) end
  return helpers.track_event(event, ctx, "purchase", {
    order_id = ctx.get(p, "order_id"),
    revenue = ctx.get(p, "revenue") or ctx.get(p, "total"),
    currency = ctx.get(p, "currency"),
  }, { "order_id", "revenue", "currency" })
end
