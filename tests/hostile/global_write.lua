return function(event, ctx)
  leaked = "value for the next event"
end
