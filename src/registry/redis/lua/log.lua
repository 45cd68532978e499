-- Reads a tenant's event log (see prelude.lua) after a sequence number.
-- KEYS[1] = P .. 'log', KEYS[2] = P .. 'lsq'; ARGV[1] = after, ARGV[2] = limit.
-- Returns {head, trimmed ('1': events after `after` are missing), event...}.
-- An entry holds one script's events (fields `e`, in order), each event's
-- sequence number ending its JSON (`"q":n}`). Entry ids and sequence
-- numbers both only grow, so the first entry past `after` is found by a
-- binary search over the ids' ms part: O(log age) reads
-- (tests/differential.rs compares every answer with the embedded log).
local lk = KEYS[1]
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local head = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local out = {tostring(head), '0'}
if limit == 0 then return out end
local function q_of(ej) return tonumber(string.match(ej, '"q":(%d+)}$')) end
local function first_q(e) return q_of(e[2][2]) end
local function last_q(e) return q_of(e[2][#e[2]]) end
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
if after + 1 < first_q(first) then
  out[2] = '1'
else
  local last = redis.call('XREVRANGE', lk, '+', '-', 'COUNT', 1)[1]
  if last_q(last) <= after then return out end
  -- The least ms whose last entry goes past `after`; the events after
  -- `after` start there (several entries may share one ms).
  local lo, hi = ms_of(first[1]), ms_of(last[1])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XREVRANGE', lk, string.format('%d', mid), '-', 'COUNT', 1)[1]
    if last_q(e) > after then hi = mid else lo = mid + 1 end
  end
  start = string.format('%d', lo)
end
-- From `start`, skipping the events at or before `after` (only in the
-- entries of that first ms), until `limit` events or the end.
local n = 0
while n < limit do
  local want = limit - n
  local es = redis.call('XRANGE', lk, start, '+', 'COUNT', want)
  for _, e in ipairs(es) do
    local f = e[2]
    for i = 2, #f, 2 do
      if n < limit and q_of(f[i]) > after then
        n = n + 1
        out[n + 2] = f[i]
      end
    end
    start = '(' .. e[1]
  end
  if #es < want then break end
end
return out
