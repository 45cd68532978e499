-- Node membership, all under the '{nodes}' hash tag.
--   KEYS[1] = '<ns>:{nodes}:leases' (zset node -> lease end, unix ms)
--   ARGV[1] = op: 'lease' | 'tenant' | 'bury' | 'reaped'
--   ARGV[2] = node incarnation, ARGV[3] = now, ARGV[4..] per op
local L = KEYS[1]
local B = string.sub(L, 1, #L - 6)  -- '<ns>:{nodes}:'
local op, node, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if op == 'bury' then
  -- Declares a node dead for good; returns the tenants still to reap it
  -- from. Until each is reaped (op 'reaped') the node stays in 'reaping',
  -- which lease rounds offer to live nodes, so a reap cut short (Redis
  -- error, the burying node dying) is finished by someone.
  redis.call('ZADD', B .. 'dead', now, node)
  redis.call('ZREM', L, node)
  redis.call('ZREMRANGEBYSCORE', B .. 'dead', '-inf', now - 86400000)
  local ts = redis.call('SMEMBERS', B .. 't:' .. node)
  if #ts > 0 then redis.call('SADD', B .. 'reaping', node)
  else redis.call('SREM', B .. 'reaping', node) end
  return cjson.encode({t = ts})
end
if op == 'reaped' then
  -- ARGV[4] = a tenant the dead node's sockets are all detached from.
  redis.call('SREM', B .. 't:' .. node, ARGV[4])
  if redis.call('EXISTS', B .. 't:' .. node) == 0 then
    redis.call('SREM', B .. 'reaping', node)
  end
  return cjson.encode({ok = true})
end
if redis.call('ZSCORE', B .. 'dead', node) then return cjson.encode({dead = true}) end
if op == 'tenant' then
  redis.call('SADD', B .. 't:' .. node, ARGV[4])
  return cjson.encode({ok = true})
end
-- op == 'lease': ARGV[4] = ttl ms, ARGV[5] = a fresh epoch to use if none,
-- ARGV[6] = recovery window ms, ARGV[7] = the epoch this node knew ('' at
-- its start). A node that knew an epoch and finds none saw Redis lose its
-- data: claims are refused for the recovery window while nodes re-assert.
local known = redis.call('ZSCORE', L, node)
redis.call('ZADD', L, now + tonumber(ARGV[4]), node)
local epoch = redis.call('GET', B .. 'epoch')
local created = false
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', B .. 'epoch', epoch)
  if ARGV[7] ~= '' then
    redis.call('SET', B .. 'epoch:recovering', '1', 'PX', tonumber(ARGV[6]))
  end
  created = true
end
local due = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, 16)
for _, n in ipairs(redis.call('SRANDMEMBER', B .. 'reaping', 4)) do
  if n ~= node then table.insert(due, n) end
end
return cjson.encode({epoch = epoch, created = created, fresh = not known, due = due})
