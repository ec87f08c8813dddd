return function(event, ctx)
  local t, keep = {}, {}
  for i = 1, 50000 do t["k" .. i] = i; keep[i] = "x" .. i end
  ctx.json(t, { max_bytes = 2, keep = keep })   -- each member looked up in a 50000-name list
end
