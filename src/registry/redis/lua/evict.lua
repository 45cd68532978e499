-- Admin force logout. R = {by_kind = 'sid'|'login'|'station', v, msg, by}.
local id
if R.by_kind == 'sid' then
  if redis.call('EXISTS', P .. 's:' .. R.v) == 1 then id = R.v
  elseif redis.call('EXISTS', P .. 't:' .. R.v) == 1 then return err('ended')
  else return err('notfound') end
elseif R.by_kind == 'login' then
  id = redis.call('GET', P .. 'l:' .. R.v)
  if not id then return err('nologin') end
else
  id = redis.call('GET', P .. 'st:' .. R.v)
  if not id then return err('nostation') end
end
local r = rec(id)
if not r then return err('notfound') end
local s = finish(r, 'evicted', {client = R.by, station = '', sid = '', at = NOW}, R.msg)
return cjson.encode({ev = {s}})
