return function(event, ctx)
  local s = "x"
  for i = 1, 64 do s = s .. s end
  return { url = s }
end
