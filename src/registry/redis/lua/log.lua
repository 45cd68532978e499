-- Reads a tenant's event log (see prelude.lua) after a sequence number.
-- KEYS[1] = P .. 'log', KEYS[2] = P .. 'lsq'; ARGV[1] = after, ARGV[2] = limit.
-- Returns {head, trimmed ('1': events after `after` are missing), event...}.
-- Ids are `<ms>-<seq>` and both parts only grow, so the first event after
-- `after` is found by a binary search over the ms part: O(log age) reads
-- (tests/differential.rs compares every answer with the embedded log).
local lk = KEYS[1]
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local head = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local out = {tostring(head), '0'}
if limit == 0 then return out end
local function seq_of(id) return tonumber(string.match(id, '%-(%d+)$')) end
local function ms_of(id) return tonumber(string.match(id, '^(%d+)%-')) end
local first = redis.call('XRANGE', lk, '-', '+', 'COUNT', 1)[1]
if after > head then
  -- Ahead of the head: the log restarted (Redis lost it).
  out[2] = '1'
  after = 0
end
if not first then
  if after < head then out[2] = '1' end
  return out
end
local start = '-'
if after + 1 < seq_of(first[1]) then
  out[2] = '1'
else
  local last = redis.call('XREVRANGE', lk, '+', '-', 'COUNT', 1)[1]
  if seq_of(last[1]) <= after then return out end
  -- The least ms whose last entry is past `after`; the entries after
  -- `after` start there (several entries may share one ms).
  local lo, hi = ms_of(first[1]), ms_of(last[1])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XREVRANGE', lk, string.format('%d', mid), '-', 'COUNT', 1)[1]
    if seq_of(e[1]) > after then hi = mid else lo = mid + 1 end
  end
  start = string.format('%d-%d', lo, after + 1)
end
for _, e in ipairs(redis.call('XRANGE', lk, start, '+', 'COUNT', limit)) do
  table.insert(out, e[2][2])
end
return out
