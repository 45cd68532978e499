-- Admin force logout. R = {by_kind = 'sid'|'login'|'station'|'all', v, msg,
-- by; for 'all': role ('' = any), after, max}. 'all' ends at most R.max live
-- sessions per call, in id order after R.after, like a tenant-wide notice;
-- `next` is where the caller goes on, '' when done.
local by = {client = R.by, station = '', sid = '', at = NOW}
if R.by_kind == 'all' then
  local from = '-'
  if R.after ~= '' then from = '(' .. R.after end
  local ids = redis.call('ZRANGEBYLEX', P .. 'live', from, '+', 'LIMIT', 0, R.max)
  local ev, next = {}, ''
  if #ids == R.max then next = ids[#ids] end
  for _, id in ipairs(ids) do
    local r = rec(id)
    if r and (R.role == '' or r.s.role == R.role) then
      local s = finish(r, 'evicted', by, R.msg)
      table.insert(ev, s)
    end
  end
  return cjson.encode({ev = ev, next = next})
end
local id
if R.by_kind == 'sid' then
  if redis.call('EXISTS', P .. 's:' .. R.v) == 1 then id = R.v
  elseif redis.call('EXISTS', P .. 't:' .. R.v) == 1 then return err('ended')
  else return err('notfound') end
elseif R.by_kind == 'login' then
  id = redis.call('GET', P .. 'l:' .. R.v)
  if not id then return err('nologin') end
else
  -- Every holder of a shared station.
  local hs = station_holders(R.v)
  if #hs == 0 then return err('nostation') end
  local ev = {}
  for _, s in ipairs(hs) do
    local r = rec(s.id)
    if r then table.insert(ev, (finish(r, 'evicted', by, R.msg))) end
  end
  return cjson.encode({ev = ev})
end
local r = rec(id)
if not r then return err('notfound') end
local s = finish(r, 'evicted', by, R.msg)
return cjson.encode({ev = {s}})
