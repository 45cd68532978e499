-- The due-index: which tenants have a session deadline, and when the
-- earliest falls. A score is a hint, never later than the tenant's real
-- earliest deadline (earlier is harmless: expiry wakes the tenant, finds
-- nothing due and corrects it). All under the '{nodes}' hash tag:
--   KEYS[1] = '<ns>:{nodes}:due'   zset tenant -> earliest deadline (unix ms)
--   KEYS[2] = '<ns>:{nodes}:due:v' hash tenant -> version, bumped by every
--             'lower', so a 'drop' decided on an older view drops nothing
--   ARGV[1] = op: 'lower' | 'take' | 'drop'
local D, V, op = KEYS[1], KEYS[2], ARGV[1]
if op == 'lower' then
  -- ARGV[2..] = tenant, deadline pairs: a deadline each tenant has (or
  -- had). Never raises a score.
  for i = 2, #ARGV - 1, 2 do
    redis.call('ZADD', D, 'LT', ARGV[i + 1], ARGV[i])
    redis.call('HINCRBY', V, ARGV[i], 1)
  end
  return 1
end
if op == 'take' then
  -- ARGV[2] = now, ARGV[3] = retry at, ARGV[4] = max. Returns up to max
  -- due tenants with their versions, each moved to `retry at` so other
  -- nodes skip it, and it comes due again if its sweeper dies.
  local due = redis.call('ZRANGEBYSCORE', D, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  for _, t in ipairs(due) do
    redis.call('ZADD', D, 'XX', ARGV[3], t)
    table.insert(out, t)
    table.insert(out, redis.call('HGET', V, t) or '0')
  end
  return out
end
if op == 'drop' then
  -- ARGV[2] = tenant, ARGV[3] = its version when taken. Nothing lowered
  -- it since: it has no deadline left.
  if (redis.call('HGET', V, ARGV[2]) or '0') == ARGV[3] then
    redis.call('ZREM', D, ARGV[2])
    redis.call('HDEL', V, ARGV[2])
    return 1
  end
  return 0
end
return redis.error_reply('due: unknown op ' .. tostring(op))
