-- runs at load: 2^40 reads and writes of nil inside one C call
table.move({}, 1, 1 << 40, 2)
return function(event, ctx)
  return { url = "http://127.0.0.1:9/page" }
end
