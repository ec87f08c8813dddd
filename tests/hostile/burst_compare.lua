return function(event, ctx)
  -- strings of NULs: each `<` calls strcoll once per NUL, ~50 ms for 8 MB
  local z, x = ("\0"):rep(8 << 20), 0
  -- cheap code first, long enough to be watched: the hook's interval grows back to a thousand
  local t0 = os.clock()
  while os.clock() - t0 < 0.05 do for i = 1, 5000 do x = x + i end end
  -- then two instructions a comparison, no call: the count alone saw 500 of them (25 s)
  repeat until z < z
end
