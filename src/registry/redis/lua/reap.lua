-- A node died (its lease ran out): fence it in this tenant for good and
-- detach its sockets, at most R.max sessions per call so a node that held
-- tens of thousands does not block Redis for seconds (8,000 in one call
-- took 172 ms); the caller repeats while `more`. Sessions left without a
-- socket become DISCONNECTED and may resume on any node within grace.
-- R = {dead, max}.
redis.call('SET', P .. 'dead:' .. R.dead, '1', 'PX', C.tt)
local key = P .. 'n:' .. R.dead
local n = 0
for _, id in ipairs(redis.call('SPOP', key, R.max)) do
  local r = rec(id)
  if r and drop_sockets(r, R.dead, nil) > 0 then
    r.s.seen = NOW
    if #r.k == 0 then disconnect(r) end
    put(r)
    n = n + 1
  end
end
return cjson.encode({n = n, more = redis.call('SCARD', key) > 0})
