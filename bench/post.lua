-- POSTs one Mailchimp audience form body per request, each with its own data[id], as a real
-- audience import would send: relay deduplicates identical webhooks (Mailchimp's retries), so a
-- benchmark repeating one body would measure the duplicate path instead of the normal one.
-- The ids count up from FIRST, which the harness gives every wrk process apart (LuaJIT's
-- math.random starts from the same seed in every process, so it cannot tell runs apart).
-- With "same" instead of FIRST it POSTs the body unchanged every time: the duplicate path.
-- Usage: wrk ... -s bench/post.lua URL -- /path/to/body.txt FIRST|same
local prefix, suffix, whole
local counter = 0

init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  if args[2] == "same" then
    whole = body
    return
  end
  local s, e = body:find("data%%5Bid%%5D=[^&]*")
  prefix = body:sub(1, s - 1) .. "data%5Bid%5D="
  suffix = body:sub(e + 1)
  counter = assert(tonumber(args[2]), "FIRST or same expected after the body file")
end

request = function()
  if whole then
    return wrk.format(nil, nil, nil, whole)
  end
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. string.format("%010d", counter % 10000000000) .. suffix)
end
