-- Delivers or queues a notice. R = {to = 'sid'|'login'|'all', v, n,
-- after, max}. To all: at most R.max live sessions per call, in session id
-- order after R.after (a tenant-wide notice to 8,000 sessions in one call
-- blocked Redis for 127 ms); `next` is the last one done when more may
-- follow, and the caller repeats from there.
local lost = ensure_epoch()
if lost then return lost end
local n = R.n
if n.exp == 0 then n.exp = NOW + C.nt end
local out = {d = 0, q = 0}
if n.exp <= NOW then return cjson.encode(out) end
local ids = {}
if R.to == 'sid' then
  if redis.call('EXISTS', P .. 's:' .. R.v) == 1 then ids = {R.v}
  elseif redis.call('EXISTS', P .. 't:' .. R.v) == 1 then return err('ended')
  else return err('notfound') end
elseif R.to == 'login' then
  local id = redis.call('GET', P .. 'l:' .. R.v)
  if id then ids = {id} else
    local key = P .. 'm:' .. R.v
    local mb = push_notice(jget(key) or {}, n)
    -- The mailbox lives as long as its longest-lived notice: each notice
    -- keeps its own expiry (a short one queued last must not cut the rest).
    local last = n.exp
    for _, x in ipairs(mb) do if x.exp > last then last = x.exp end end
    redis.call('SET', key, cjson.encode(mb), 'PX', math.max(1, last - NOW))
    out.q = 1
    return cjson.encode(out)
  end
else
  local from = '-'
  if R.after ~= '' then from = '(' .. R.after end
  ids = redis.call('ZRANGEBYLEX', P .. 'live', from, '+', 'LIMIT', 0, R.max)
  if #ids == R.max then out.next = ids[#ids] end
end
for _, id in ipairs(ids) do
  local r = rec(id)
  if r then
    r.nt = push_notice(r.nt, n)
    put(r)
    if #r.k == 0 then out.q = out.q + 1 else
      out.d = out.d + 1
      emit_nodes(r.k, cjson.encode({k = 'n', sid = id, n = n}))
    end
  end
end
return cjson.encode(out)
