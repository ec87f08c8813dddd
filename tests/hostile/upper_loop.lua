return function(event, ctx)
  local s = ("x"):rep(8 << 20)
  -- each call takes milliseconds and is one instruction: the count hook alone saw a thousand of them
  while true do local u = s:upper() end
end
