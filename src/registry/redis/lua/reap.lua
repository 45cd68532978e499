-- A node died (its lease ran out): fence it in this tenant for good and
-- detach its sockets; sessions left without one become DISCONNECTED and
-- may resume on any node within grace. R = {dead}.
redis.call('SET', P .. 'dead:' .. R.dead, '1', 'PX', C.tt)
local key = P .. 'n:' .. R.dead
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', key)) do
  local r = rec(id)
  if r and drop_sockets(r, R.dead, nil) > 0 then
    r.s.seen = NOW
    if #r.k == 0 then disconnect(r) end
    put(r)
    n = n + 1
  end
end
redis.call('DEL', key)
return cjson.encode({n = n})
