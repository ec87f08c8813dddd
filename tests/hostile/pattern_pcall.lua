return function(event, ctx)
  while true do pcall(string.gsub, ("a"):rep(30), ("a-"):rep(6) .. "b", "") end
end
