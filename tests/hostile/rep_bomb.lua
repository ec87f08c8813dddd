return function(event, ctx)
  return { url = string.rep("x", 1 << 40) }
end
