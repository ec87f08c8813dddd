return function(event, ctx)
  os.execute("touch /tmp/blueprint-sandbox-escaped")
end
