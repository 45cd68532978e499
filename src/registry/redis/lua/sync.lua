-- Reconciliation of one node's sockets against the registry, after a lost
-- subscription and periodically. R = {node, have = [{sid, gen}],
-- stale = [sid], before}.
-- `have`: sessions the node holds sockets for. Returns the tombstones of
-- those that ended (their forced logout was missed) and the ids Redis no
-- longer knows (lost data: to re-assert).
-- `stale`: sessions Redis lists under the node (`n:<node>`) that the node
-- neither holds nor is attaching: its sockets there are dropped. Only
-- sockets attached before `before` (the node's clock when it looked), so a
-- socket attached since is never taken for a stale one.
if fenced(R.node) then return err('fenced') end
local ended, missing = {}, {}
for _, h in ipairs(R.have or {}) do
  local r = rec(h.sid)
  if not r or r.s.gen ~= h.gen then
    local t = tomb(h.sid)
    if t then table.insert(ended, t)
    elseif not r then table.insert(missing, h.sid) end
  end
end
for _, id in ipairs(R.stale or {}) do
  local r = rec(id)
  if r then
    local removed, left = drop_sockets(r, R.node, nil, R.before)
    if removed > 0 then
      r.s.seen = NOW
      if #r.k == 0 then disconnect(r) end
      put(r)
    elseif not left then
      -- Listed under the node with none of its sockets: mend the index.
      redis.call('SREM', P .. 'n:' .. R.node, id)
    end
  else
    redis.call('SREM', P .. 'n:' .. R.node, id)
  end
end
return cjson.encode({ended = ended, missing = missing})
