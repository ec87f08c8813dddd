return function(event, ctx)
  local f = load("return 1")
  return f()
end
