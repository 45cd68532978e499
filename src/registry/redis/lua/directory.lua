-- The station directory `sd`: a sorted set of station names, all scored 0
-- (ZRANGEBYLEX reads it in name order: read.lua 'dir'). R = {op = 'add' |
-- 'rm', stations (distinct, at most 1000), max (max_registered_stations),
-- ttl (ms)}. 'add' registers all or none: past `max` it answers
-- err('toomanystations', {adding, would}). Each change keeps the set for
-- `ttl` more (STATION_DIRECTORY_TTL). Returns {n = added or removed, reg}.
local key = P .. 'sd'
local n = 0
if R.op == 'add' then
  local new = {}
  for _, st in ipairs(R.stations) do
    if not redis.call('ZSCORE', key, st) then
      table.insert(new, 0)
      table.insert(new, st)
    end
  end
  n = #new / 2
  local have = redis.call('ZCARD', key)
  if n > 0 and have + n > R.max then
    return err('toomanystations', {adding = n, would = have + n})
  end
  if n > 0 then redis.call('ZADD', key, unpack(new)) end
elseif #R.stations > 0 then
  n = redis.call('ZREM', key, unpack(R.stations))
end
if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, R.ttl) end
return cjson.encode({n = n, reg = redis.call('ZCARD', key)})
