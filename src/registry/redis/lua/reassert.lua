-- After Redis lost its data: a node puts back a session it holds sockets
-- for, unless the login or station was taken meanwhile (then the local
-- sockets lose). Generations never go backwards. R = {node, s, k}.
if fenced(R.node) then return err('fenced') end
local s = R.s
local cur = rec(s.id)
if cur then
  -- Put back already (by another node holding sockets of it): add ours.
  local have, added = {}, false
  for _, k in ipairs(cur.k) do have[k.n .. '/' .. k.c] = true end
  for _, k in ipairs(R.k) do
    if not have[k.n .. '/' .. k.c] then
      table.insert(cur.k, {n = k.n, c = k.c, t = NOW})
      added = true
    end
  end
  if added then
    redis.call('SADD', P .. 'n:' .. R.node, s.id)
    if cur.s.state ~= 'connected' then
      cur.s.state = 'connected'
      cur.dl = 0
      redis.call('ZREM', P .. 'dl', s.id)
      presence(cur.s, 'reconnected')
    end
    put(cur)
  end
  return cjson.encode({o = 'ok'})
end
local t = tomb(s.id)
if t then return cjson.encode({o = 'ended', t = t}) end
local hid = redis.call('GET', P .. 'l:' .. s.login)
if hid and hid ~= s.id then
  local h = rec(hid)
  if h then return cjson.encode({o = 'conflict', h = h.s}) end
end
local joins = false
if s.station ~= '' then
  hid = redis.call('GET', P .. 'st:' .. s.station)
  if hid and hid ~= s.id then
    local h = rec(hid)
    -- A holder from this session's device shares the station with it.
    if h and s.dev and h.s.dev == s.dev then joins = true
    elseif h then return cjson.encode({o = 'conflict', h = h.s}) end
  end
end
local g = tonumber(redis.call('GET', P .. 'g:' .. s.login) or '0')
if g < s.gen then redis.call('SET', P .. 'g:' .. s.login, s.gen) end
if redis.call('EXISTS', P .. 'ep') == 0 then redis.call('SET', P .. 'ep', C.epoch) end
s.state = 'connected'
s.seen = NOW
put({s = s, k = R.k, nt = {}, dl = 0})
redis.call('SET', P .. 'l:' .. s.login, s.id)
if joins then
  local shk = P .. 'sh:' .. s.station
  if not redis.call('LPOS', shk, s.id) then redis.call('RPUSH', shk, s.id) end
elseif s.station ~= '' then redis.call('SET', P .. 'st:' .. s.station, s.id) end
redis.call('ZADD', P .. 'live', 0, s.id)
redis.call('SADD', P .. 'n:' .. R.node, s.id)
return cjson.encode({o = 'ok'})
