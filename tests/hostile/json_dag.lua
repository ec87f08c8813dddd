return function(event, ctx)
  local t = {}
  for i = 1, 60 do t = { t, t } end   -- 60 small tables, 2^60 leaves as JSON
  return { url = "http://127.0.0.1:9/", body = ctx.json(t) }
end
