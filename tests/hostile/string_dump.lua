return function(event, ctx)
  return ("x").dump(function() end)
end
