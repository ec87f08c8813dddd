return function(event, ctx)
  local t = setmetatable({}, { __len = function() return 1 << 50 end })
  table.insert(t, 1, "x")         -- shifts 2^50 (absent) elements up
end
