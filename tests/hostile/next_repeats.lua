return function(event, ctx)
  -- the event's properties repeat their last key thousands of times (the spec sends it):
  -- next() skips each repeat after looking the name up among all keys before it
  local props, last = event.properties, "k" .. event.properties.n
  while true do next(props, last) end
end
