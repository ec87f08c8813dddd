return function(event, ctx)
  local socket = require("socket")
end
