return function(event, ctx)
  local s, t = ("x"):rep(8 << 20), {}
  for i = 1, 1000 do t[i] = s end
  print(table.unpack(t))   -- 1000 references to one 8 MiB string: an 8 GiB line outside the Lua state
  error("printed")
end
