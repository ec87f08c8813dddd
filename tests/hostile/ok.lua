return function(event, ctx)
  return { url = "http://127.0.0.1:9/ok", json = { upper = string.upper("ok"), leaked = rawequal(nil, nil) } }
end
