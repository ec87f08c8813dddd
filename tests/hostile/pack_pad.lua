return function(event, ctx)
  return { url = string.pack("c2000000000", "") }   -- 2 GB of padding: the memory cap stops it
end
