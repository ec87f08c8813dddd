return function(event, ctx)
  local s = ("x"):rep(3 << 20)
  -- each `..` copies megabytes and is one instruction (no call): a fixed
  -- thousand instructions between checks let this run seconds past its budget
  while true do local t = s .. s .. s .. s .. s .. s .. s .. s end
end
