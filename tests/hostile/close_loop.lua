return function(event, ctx)
  local guard <close> = setmetatable({}, { __close = function() while true do end end })
  error("leaving")
end
