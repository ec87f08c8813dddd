return function(event, ctx)
  -- every element comes from a C function (rawlen(t) is 0): no Lua runs between them
  local t = setmetatable({}, { __index = rawlen })
  return { url = table.concat(t, "", 1, 1 << 40) }
end
