return function(event, ctx)
  return { url = string.format("%999999999d", 1) }   -- widths have at most two digits
end
