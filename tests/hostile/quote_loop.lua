return function(event, ctx)
  local s = ("\0\n\"\\\1"):rep(1 << 19)
  -- %q writes a long string byte by byte, in one C call
  while true do local q = string.format("%q", s) end
end
