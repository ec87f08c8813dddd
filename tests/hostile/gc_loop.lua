return function(event, ctx)
  setmetatable({}, { __gc = function() while true do end end })
end
