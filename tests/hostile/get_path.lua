return function(event, ctx)
  -- assert(t, key) returns t: every part of the path is a C call that leads back to t
  local t = setmetatable({}, { __index = assert })
  local path = ("x."):rep(1 << 21)
  while true do ctx.get(t, path) end
end
