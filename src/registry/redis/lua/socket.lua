-- A node's writes for its sockets, each fenced: a node that was declared
-- dead (its lease ran out) can change nothing, and the token's generation
-- must be the session's. R = {op = 'attach'|'detach'|'status'|'ack', sid,
-- gen, node, conn, status, nid, dead (attach: nodes known dead)}.
if fenced(R.node) then return err('fenced') end
local r = rec(R.sid)
if not r then
  if R.op == 'detach' then return cjson.encode({o = 'ok'}) end
  local t = tomb(R.sid)
  if t and R.op == 'attach' then return cjson.encode({o = 'ended', t = t}) end
  if t then return err('ended') end
  return err('notfound')
end
if R.op ~= 'ack' and r.s.gen ~= R.gen then return err('stale', {cur = r.s.gen}) end

if R.op == 'attach' then
  local present = false
  for _, k in ipairs(r.k) do if k.n == R.node and k.c == R.conn then present = true end end
  if not present and #r.k >= tonumber(C.ms) then
    -- At the limit: sockets of a node that is dead do not count. Dead is
    -- this tenant's fence (a reap began here) or R.dead, nodes the caller
    -- found in the `{nodes}` dead set (another slot on a Redis Cluster,
    -- so the caller asks, and only when the limit is hit). Their sockets
    -- are dropped now and the node fenced here, as its reap would.
    local gone = {}
    for _, n in ipairs(R.dead or {}) do gone[n] = true end
    for _, k in ipairs(r.k) do
      if k.n ~= R.node and gone[k.n] == nil then gone[k.n] = fenced(k.n) end
    end
    for n, dead in pairs(gone) do
      if dead and n ~= R.node then
        redis.call('SET', P .. 'dead:' .. n, '1', 'PX', C.tt)
        drop_sockets(r, n, nil)
      end
    end
    if #r.k >= tonumber(C.ms) then
      -- Sockets on other nodes may be on one that died and is not yet
      -- declared dead: the caller checks and retries, or tells the client
      -- to come back later; only this node's own sockets are sure.
      local elsewhere, seen = {}, {}
      for _, k in ipairs(r.k) do
        if k.n ~= R.node and not seen[k.n] then
          seen[k.n] = true
          table.insert(elsewhere, k.n)
        end
      end
      if #elsewhere > 0 then return err('toomany', {elsewhere = elsewhere}) end
      return err('toomany')
    end
  end
  if not present then
    table.insert(r.k, {n = R.node, c = R.conn, t = NOW})
    redis.call('SADD', P .. 'n:' .. R.node, R.sid)
  end
  local change = nil
  if r.s.state == 'pending' then change = 'connected' end
  if r.s.state == 'disconnected' then change = 'reconnected' end
  local resumed = r.s.state == 'disconnected'
  r.dl = 0
  redis.call('ZREM', P .. 'dl', R.sid)
  r.s.state = 'connected'
  r.s.node = R.node
  r.s.seen = NOW
  local sj = cjson.encode(r.s)
  put_j(r, sj)
  if change then presence_j(sj, change) end
  local q, bad = q_read(P .. 'q:' .. R.sid)
  return '{"o":"live","s":' .. sj .. ',"resumed":' .. tostring(resumed) .. ',"nt":' .. q_bodies(q)
    .. ',"bad":' .. bad .. '}'
elseif R.op == 'detach' then
  if drop_sockets(r, R.node, R.conn) == 0 then return cjson.encode({o = 'ok'}) end
  r.s.seen = NOW
  if #r.k == 0 then disconnect(r) end
  put(r)
  return cjson.encode({o = 'ok'})
elseif R.op == 'status' then
  r.s.status = R.status
  r.s.seen = NOW
  put(r)
  presence(r.s, 'status_changed')
  return cjson.encode({o = 'ok'})
else
  local key = P .. 'q:' .. R.sid
  local q = q_read(key)
  local keep = {}
  for _, x in ipairs(q) do
    if x.id ~= R.nid then table.insert(keep, x) else q_forget(x) end
  end
  if #keep ~= #q then q_write(key, keep) end
  r.s.seen = NOW
  put(r)
  return cjson.encode({o = 'ok'})
end
