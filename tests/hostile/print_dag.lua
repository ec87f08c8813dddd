return function(event, ctx)
  local t = {}
  for i = 1, 60 do t = { t, t } end
  print(t)
  while true do end
end
