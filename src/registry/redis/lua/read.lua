-- Read-only queries. R = {q = 'sid'|'login'|'list'|'dir'|'stations', ...}.
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
elseif R.q == 'dir' then
  -- A page of the station directory `sd` (a sorted set scored 0, so in
  -- name order): R = {prefix, free, limit, scan, after}. Names from after
  -- `after` (or from the prefix) are examined in order, at most R.scan of
  -- them, until R.limit are in the page; `next` is the last name examined
  -- when another follows (state.rs list_stations, the same walk). Returns
  -- {sn = names, st = their station_info, next, reg = registered}.
  local from, to = '-', '+'
  if R.prefix ~= '' then from, to = '[' .. R.prefix, '(' .. R.prefix .. '\255' end
  if R.after ~= '' and R.after >= R.prefix then from = '(' .. R.after end
  local sn, st, examined, last, next = {}, {}, 0, nil, ''
  while next == '' do
    local want = math.min(R.limit - #sn, R.scan - examined)
    local names = redis.call('ZRANGEBYLEX', P .. 'sd', from, to, 'LIMIT', 0, want + 1)
    for _, name in ipairs(names) do
      if #sn >= R.limit or examined >= R.scan then next = last; break end
      examined = examined + 1
      last = name
      local info = station_info(name)
      if not R.free or #info.hs == 0 then
        table.insert(sn, name)
        table.insert(st, info)
      end
    end
    if #names <= want then break end
    from = '(' .. last
  end
  return cjson.encode({sn = sn, st = st, next = next, reg = redis.call('ZCARD', P .. 'sd')})
else
  local out = {}
  for _, st in ipairs(R.stations) do table.insert(out, station_info(st)) end
  return cjson.encode({st = out})
end
