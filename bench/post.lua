-- POSTs one Mailchimp audience form body per request, each with its own data[id], as a real
-- audience import would send: relay deduplicates identical webhooks (Mailchimp's retries), so a
-- benchmark repeating one body would measure the duplicate path instead of the normal one.
-- Usage: wrk ... -s bench/post.lua URL -- /path/to/body.txt
local prefix, suffix
local counter = 0

init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  local s, e = body:find("data%%5Bid%%5D=[^&]*")
  prefix = body:sub(1, s - 1) .. "data%5Bid%5D="
  suffix = body:sub(e + 1)
  -- Each wrk thread numbers its requests apart from the others.
  counter = math.random(1, 1000000000) * 1000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. string.format("%010d", counter % 10000000000) .. suffix)
end
