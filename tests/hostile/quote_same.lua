-- Not hostile: string.format's %q quotes a long string itself (metered.c);
-- the text must be the library's, byte for byte.
return function(event, ctx)
  local parts = {}
  for i = 0, 127 do parts[#parts + 1] = string.char(i) .. (i % 2 == 0 and "7" or "x") end
  local long = table.concat(parts):rep(40)   -- every ASCII byte (the body is shown as UTF-8), followed by a digit and not
  local body = string.format("%q|%5.1f|%q|%%|%s|%-3d|%q", long, 1.5, "short\n\0", "x", 7, long .. "\0")
  return { url = "http://127.0.0.1:9/ok", body = body, headers = { ["Content-Type"] = "text/plain" } }
end
