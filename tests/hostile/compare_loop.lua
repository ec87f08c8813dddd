return function(event, ctx)
  local a, b = ("x"):rep(6 << 20) .. "a", ("x"):rep(6 << 20) .. "b"
  -- a comparison of two long strings reads both: one instruction, milliseconds
  while true do local less = a < b end
end
