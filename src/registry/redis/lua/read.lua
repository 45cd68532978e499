-- Read-only queries. R = {q = 'sid'|'login'|'list'|'stations', ...}.
if R.q == 'sid' then
  local r = rec(R.v)
  if r then return cjson.encode({s = r.s}) end
  local t = tomb(R.v)
  if t then return cjson.encode({s = t.s}) end
  return err('notfound')
elseif R.q == 'login' then
  local id = redis.call('GET', P .. 'l:' .. R.v)
  local r = id and rec(id)
  if r then return cjson.encode({s = r.s}) end
  return err('nologin')
elseif R.q == 'list' then
  local from = '-'
  if R.after ~= '' then from = '(' .. R.after end
  local ids = redis.call('ZRANGEBYLEX', P .. 'live', from, '+', 'LIMIT', 0, R.limit + 1)
  local out, next = {}, ''
  for i, id in ipairs(ids) do
    if i > R.limit then next = out[#out].id; break end
    local r = rec(id)
    if r then table.insert(out, r.s) end
  end
  return cjson.encode({ss = out, next = next})
else
  local out = {}
  for _, st in ipairs(R.stations) do table.insert(out, station_info(st)) end
  return cjson.encode({st = out})
end
