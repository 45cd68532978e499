-- Reconciliation of one node's sockets against the registry, after a lost
-- subscription and periodically. R = {node, have = [{sid, gen, conns}]}.
-- Returns the tombstones of sessions the node still holds sockets for
-- (their forced logout was missed), the sessions Redis no longer knows
-- (lost data: to re-assert), and detaches sockets Redis thinks the node
-- holds but it does not.
if fenced(R.node) then return err('fenced') end
local ended, missing, seen = {}, {}, {}
for _, h in ipairs(R.have) do
  seen[h.sid] = true
  local r = rec(h.sid)
  if not r or r.s.gen ~= h.gen then
    local t = tomb(h.sid)
    if t then table.insert(ended, t)
    elseif not r then table.insert(missing, h.sid) end
  end
end
for _, id in ipairs(redis.call('SMEMBERS', P .. 'n:' .. R.node)) do
  if not seen[id] then
    local r = rec(id)
    if r then
      if drop_sockets(r, R.node, nil) > 0 then
        r.s.seen = NOW
        if #r.k == 0 then disconnect(r) end
        put(r)
      end
    else
      redis.call('SREM', P .. 'n:' .. R.node, id)
    end
  end
end
return cjson.encode({ended = ended, missing = missing})
