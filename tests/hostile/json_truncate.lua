return function(event, ctx)
  local t = {}
  for i = 1, 50000 do t["k" .. i] = i end
  while true do ctx.json(t, { max_bytes = 2 }) end   -- drops 50000 members to fit in 2 bytes
end
