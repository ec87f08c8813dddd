return function(event, ctx)
  local s = ("a"):rep(40)
  return s:find(("a*"):rep(8) .. "b")   -- backtracks for hours in the string library
end
