-- A webhook's lease and cursor (src/webhooks): one node sends a tenant's
-- events to one URL, in order, and records how far it got.
-- KEYS[1] = lease (holder's node id, PX ttl), KEYS[2] = cursor (last
-- sequence sent, PX ARGV[5]); ARGV = op ('lease' | 'done'), node, ttl ms,
-- seq (done), cursor ttl ms. Returns the cursor, or -1 when another node
-- holds the lease (or, for 'done', when this node's lease lapsed).
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then return -1 end
if ARGV[1] == 'done' then
  if not holder then return -1 end
  local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[4]) > cur then cur = tonumber(ARGV[4]) end
  redis.call('SET', KEYS[2], string.format('%d', cur), 'PX', ARGV[5])
else
  local cur = redis.call('GET', KEYS[2])
  if cur then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return tonumber(redis.call('GET', KEYS[2]) or '0')
