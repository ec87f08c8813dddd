return function(event, ctx)
  local t, keep = {}, {}
  for i = 1, 100000 do t["k" .. i] = i; keep[i] = "x" .. i end
  ctx.json(t, { max_bytes = 2, keep = keep })   -- each member looked up in a 100000-name list
end
