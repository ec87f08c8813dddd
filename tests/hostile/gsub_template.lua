return function(event, ctx)
  -- each empty match gets a million "%0" (nothing): work without output, per match
  local s, repl = ("x"):rep(100000), ("%0"):rep(1000000)
  return { url = s:gsub("", repl) }
end
