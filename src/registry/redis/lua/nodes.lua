-- Node membership, all under the '{nodes}' hash tag.
--   KEYS[1] = '<ns>:{nodes}:leases' (zset node -> lease end, Redis ms)
--   ARGV[1] = op: 'lease' | 'tenant' | 'bury' | 'leave' | 'reaped' |
--             'recovering' | 'recovered'
--   ARGV[2] = node incarnation, ARGV[3..] per op
-- Every time here is Redis's own (TIME), never a node's: leases are
-- written and judged on one clock, whatever the nodes' wall clocks say.
local L = KEYS[1]
local B = string.sub(L, 1, #L - 6)  -- '<ns>:{nodes}:'
local op, node = ARGV[1], ARGV[2]
redis.replicate_commands()  -- writes after TIME (a no-op from Redis 7)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if op == 'bury' or op == 'leave' then
  -- Declares a node dead for good; returns the tenants still to reap it
  -- from. Until each is reaped (op 'reaped') the node stays in 'reaping',
  -- which lease rounds offer to live nodes, so a reap cut short (Redis
  -- error, the burying node dying) is finished by someone. 'bury' first
  -- re-checks the lease, here, atomically: a node that renewed since the
  -- round that found it due is left alone ('leave' is a node burying
  -- itself on its way out).
  local lease = tonumber(redis.call('ZSCORE', L, node))
  if op == 'bury' and lease and lease > now then
    return cjson.encode({alive = true, t = {}})
  end
  redis.call('ZADD', B .. 'dead', now, node)
  redis.call('ZREM', L, node)
  redis.call('SREM', B .. 'epoch:reasserting', node)
  redis.call('ZREMRANGEBYSCORE', B .. 'dead', '-inf', now - 86400000)
  local ts = redis.call('SMEMBERS', B .. 't:' .. node)
  if #ts > 0 then redis.call('SADD', B .. 'reaping', node)
  else redis.call('SREM', B .. 'reaping', node) end
  return cjson.encode({t = ts})
end
if op == 'reaped' then
  -- ARGV[3] = a tenant the dead node's sockets are all detached from.
  redis.call('SREM', B .. 't:' .. node, ARGV[3])
  if redis.call('EXISTS', B .. 't:' .. node) == 0 then
    redis.call('SREM', B .. 'reaping', node)
  end
  return cjson.encode({ok = true})
end
if op == 'recovering' or op == 'recovered' then
  -- After a data loss, claims wait while 'epoch:reasserting' lists a node
  -- still putting its sessions back ('recovering': ARGV[3] = the bound
  -- that node derived from its session count; the set lives as long as
  -- the longest bound), or until the node is done ('recovered') or buried.
  local R = B .. 'epoch:reasserting'
  if op == 'recovered' then
    redis.call('SREM', R, node)
  else
    redis.call('SADD', R, node)
    if redis.call('PTTL', R) < tonumber(ARGV[3]) then redis.call('PEXPIRE', R, ARGV[3]) end
  end
  return cjson.encode({ok = true})
end
if redis.call('ZSCORE', B .. 'dead', node) then return cjson.encode({dead = true}) end
if op == 'tenant' then
  redis.call('SADD', B .. 't:' .. node, ARGV[3])
  return cjson.encode({ok = true})
end
-- op == 'lease': ARGV[3] = ttl ms, ARGV[4] = a fresh epoch to use if none,
-- ARGV[5] = recovery window ms, ARGV[6] = the epoch this node knew ('' at
-- its start), ARGV[7] = the write counter this node has seen ('' on a
-- cluster). A node that knew an epoch and finds none saw Redis lose its
-- data: claims are refused for the recovery window while nodes re-assert.
-- A node that finds its epoch but a write counter below one it saw saw
-- Redis lose its last writes (a failover to a replica that was behind):
-- the same, under a new epoch, so every node re-asserts.
-- The reply carries Redis's time (`now`): every node's registry clock
-- follows it, so the `now` tenant scripts are given is Redis's too.
local known = redis.call('ZSCORE', L, node)
redis.call('ZADD', L, now + tonumber(ARGV[3]), node)
local epoch = redis.call('GET', B .. 'epoch')
local created, lost = false, false
local wc = tonumber(redis.call('GET', B .. 'epoch:wc') or '0')
if epoch and epoch == ARGV[6] and (ARGV[7] or '') ~= '' and wc < tonumber(ARGV[7]) then
  wc = tonumber(ARGV[7])
  redis.call('SET', B .. 'epoch:wc', wc)
  epoch = nil
  lost = true
end
if not epoch then
  -- Claims wait for the window, in which every live node refreshes its
  -- lease and so notices the new epoch, also when the first lease after
  -- the loss is a freshly started node's (it cannot tell a loss from a
  -- new deployment, and waits the window out before serving).
  epoch = ARGV[4]
  redis.call('SET', B .. 'epoch', epoch)
  redis.call('SET', B .. 'epoch:recovering', '1', 'PX', tonumber(ARGV[5]))
  created = true
end
if ARGV[6] ~= '' and ARGV[6] ~= epoch then
  -- This node saw the loss: claims also wait until it re-asserted its
  -- sessions (it extends the bound by its session count).
  local R = B .. 'epoch:reasserting'
  redis.call('SADD', R, node)
  if redis.call('PTTL', R) < tonumber(ARGV[5]) then redis.call('PEXPIRE', R, ARGV[5]) end
end
local due = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, 16)
for _, n in ipairs(redis.call('SRANDMEMBER', B .. 'reaping', 4)) do
  if n ~= node then table.insert(due, n) end
end
return cjson.encode({epoch = epoch, created = created, fresh = not known, due = due,
  now = now, wc = wc, lost = lost})
