-- Ends sessions whose deadline passed. R = {max}. Deadlines in the set are
-- hints; the record's own deadline decides.
local due = redis.call('ZRANGEBYSCORE', P .. 'dl', '-inf', NOW, 'LIMIT', 0, R.max)
local ended = 0
for _, id in ipairs(due) do
  redis.call('ZREM', P .. 'dl', id)
  local r = rec(id)
  if r and r.dl ~= 0 and r.dl <= NOW then
    finish(r, 'expired', {client = 'broker', station = '', sid = '', at = NOW}, '')
    ended = ended + 1
  end
end
return cjson.encode({n = ended, more = #due == R.max})
