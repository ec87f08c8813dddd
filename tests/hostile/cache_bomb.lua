return function(event, ctx)
  local big = ("x"):rep(4 << 20)
  for i = 1, 1e9 do ctx.cache.set("k" .. i, big) end   -- kept outside the Lua state until the event ends
end
