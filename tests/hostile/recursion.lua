local function down(n) return 1 + down(n + 1) end
return function(event, ctx)
  return down(1)
end
