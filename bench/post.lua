-- POSTs one Mailchimp audience form body on every request.
-- Usage: wrk ... -s bench/post.lua URL -- /path/to/body.txt
-- The body is read once in init() so wrk builds a static request and Lua costs nothing per request.
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
