return function(event, ctx)
  local t = {}
  for i = 1, 100000 do t["k" .. i] = i end
  while true do ctx.json(t, { max_bytes = 2 }) end   -- drops 100000 members to fit in 2 bytes
end
