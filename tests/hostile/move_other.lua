return function(event, ctx)
  table.move({}, 1, 1 << 40, 1, {})
end
