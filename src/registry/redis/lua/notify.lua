-- Delivers or queues a notice. R = {to = 'sid'|'login'|'all', v, id,
-- b (body id), exp (text), sz (bytes), mb (the queue's byte cap), body
-- (the notice's JSON), after, max}. The node has checked the notice's
-- bounds and filled in its expiry. The body is stored once ('nb:<b>',
-- see q_read) and each queue gets a small entry naming it. 'na' lists the
-- tenant-wide bodies, oldest first.
-- To all: at most R.max live sessions per call, in session id order after
-- R.after (a tenant-wide notice to 8,000 sessions in one call blocked
-- Redis for 127 ms); `next` is the last one done when more may follow,
-- and the caller repeats from there. Sockets are told with one message
-- per node and call, carrying the body once and the session ids.
local lost = ensure_epoch()
if lost then return lost end
local out = {d = 0, q = 0, bad = 0}
local ttl = tonumber(R.exp) - NOW
if ttl <= 0 then return cjson.encode(out) end
local entry = {id = R.id, b = R.b, exp = R.exp, sz = R.sz}
local function queue(key)
  local q, bad = q_read(key)
  q_write(key, q_push(q, entry, R.mb))
  out.bad = out.bad + bad
end
local function store_body()
  redis.call('SET', P .. 'nb:' .. R.b, R.body, 'PX', ttl)
end
local ids = {}
if R.to == 'sid' then
  if redis.call('EXISTS', P .. 's:' .. R.v) == 1 then ids = {R.v}
  elseif redis.call('EXISTS', P .. 't:' .. R.v) == 1 then return err('ended')
  else return err('notfound') end
  store_body()
elseif R.to == 'login' then
  local id = redis.call('GET', P .. 'l:' .. R.v)
  store_body()
  if id then ids = {id} else
    queue(P .. 'm:' .. R.v)
    out.q = 1
    return cjson.encode(out)
  end
else
  if R.after == '' then
    -- A tenant-wide body is referenced only from live sessions' queues,
    -- which hold the C.mn newest notices at most: older tenant-wide
    -- bodies than the C.mn newest are nobody's, and go.
    store_body()
    local all = P .. 'na'
    local n = redis.call('RPUSH', all, R.b)
    for _ = 1, n - tonumber(C.mn) do
      redis.call('DEL', P .. 'nb:' .. redis.call('LPOP', all))
    end
    if redis.call('PTTL', all) < ttl then redis.call('PEXPIRE', all, ttl) end
  end
  local from = '-'
  if R.after ~= '' then from = '(' .. R.after end
  ids = redis.call('ZRANGEBYLEX', P .. 'live', from, '+', 'LIMIT', 0, R.max)
  if #ids == R.max then out.next = ids[#ids] end
end
local to, nodes = {}, {}
for _, id in ipairs(ids) do
  local r = rec(id)
  if r then
    queue(P .. 'q:' .. id)
    if #r.k == 0 then out.q = out.q + 1 else
      out.d = out.d + 1
      local seen = {}
      for _, sock in ipairs(r.k) do
        if not seen[sock.n] then
          seen[sock.n] = true
          if not to[sock.n] then to[sock.n] = {}; table.insert(nodes, sock.n) end
          table.insert(to[sock.n], id)
        end
      end
    end
  end
end
for _, node in ipairs(nodes) do
  redis.call(PUB, P .. 'ev:' .. node,
    '{"k":"n","sids":' .. cjson.encode(to[node]) .. ',"n":' .. R.body .. '}')
end
return cjson.encode(out)
