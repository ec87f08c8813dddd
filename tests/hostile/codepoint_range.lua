return function(event, ctx)
  local s = ("x"):rep(1 << 21)
  return { url = utf8.codepoint(s, 1, -1) }
end
