return function(event, ctx)
  local t = {}
  for i = 1, 60 do t = { t, t } end
  return { url = "http://127.0.0.1:9/", json = t }   -- encoded after the mapping returned
end
