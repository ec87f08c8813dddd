return function(event, ctx)
  -- one 4 MiB request returned 200 times: copied out of the Lua state, 800 MiB
  local r = { method = "POST", url = ctx.config.api_url .. "/x", body = ("x"):rep(4 << 20),
              headers = { ["Content-Type"] = "text/plain" } }
  local list = {}
  for i = 1, 200 do list[i] = r end
  return list
end
