return function(event, ctx)
  local s = ("é &/"):rep(1 << 19)
  -- our own helpers walk a long string in one C call too
  while true do local a, b = ctx.urlencode(s), ctx.slug(s) end
end
