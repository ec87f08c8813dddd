return function(event, ctx)
  local mt = getmetatable("")
  mt.__index.upper = nil
end
