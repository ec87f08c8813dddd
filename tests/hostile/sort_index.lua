return function(event, ctx)
  -- 2^31 - 2 elements, all read and written by C functions: no Lua runs while sorting
  local t = setmetatable({}, { __len = function() return (1 << 31) - 2 end, __index = rawlen, __newindex = rawequal })
  table.sort(t)
end
