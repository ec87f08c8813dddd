return function(event, ctx)
  string.upper = function() return "pwned" end
end
