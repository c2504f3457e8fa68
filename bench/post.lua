-- POSTs one Mailchimp audience form body per request, each with its own data[id], as a real
-- audience import would send: relay deduplicates identical webhooks (Mailchimp's retries), so a
-- benchmark repeating one body would measure the duplicate path instead of the normal one.
-- The ids count up from FIRST, which the harness gives every wrk process apart (LuaJIT's
-- math.random starts from the same seed in every process, so it cannot tell runs apart).
-- With "same" instead of FIRST it POSTs the body unchanged every time: the duplicate path.
-- With "scattered" after FIRST, each id is the counter put through a bijection of 32-bit
-- numbers (so still unique) and the address is made from it too: ids and addresses arrive in
-- no order, as real members' do, and land all over relay's dedup and address indexes instead of
-- at their ends.
-- Usage: wrk ... -s bench/post.lua URL -- /path/to/body.txt FIRST|same [scattered]
local prefix, middle, suffix, whole
local counter = 0
local scattered = false
local bit = require("bit")

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
  scattered = args[3] == "scattered"
  if scattered then
    local es, ee = suffix:find("data%%5Bemail%%5D=[^&]*")
    middle = suffix:sub(1, es - 1) .. "data%5Bemail%5D=member"
    suffix = "%40example.com" .. suffix:sub(ee + 1)
  end
end

local TWO32 = 4294967296

-- Odd multipliers and xor-shifts are each one-to-one on 32-bit numbers, so is their chain;
-- the products stay below 2^53, where doubles are exact.
local function scatter(n)
  local x = n % TWO32
  x = (x * 40503) % TWO32
  x = bit.bxor(x, bit.rshift(x, 15)) % TWO32
  x = (x * 52711) % TWO32
  return bit.bxor(x, bit.rshift(x, 13)) % TWO32
end

request = function()
  if whole then
    return wrk.format(nil, nil, nil, whole)
  end
  counter = counter + 1
  if scattered then
    local id = string.format("%010d", scatter(counter))
    return wrk.format(nil, nil, nil, prefix .. id .. middle .. id .. suffix)
  end
  return wrk.format(nil, nil, nil, prefix .. string.format("%010d", counter % 10000000000) .. suffix)
end
