-- Shared by every tenant script. The tenant's keys all carry one hash tag,
-- so a script touches a single Redis Cluster slot:
--   KEYS[1]  = P .. 'ep'   the tenant's epoch marker (routes the script)
--   ARGV[1]  = P           key prefix, "ts:{<tenant>}:"
--   ARGV[2]  = now (unix ms, from the calling node)
--   ARGV[3]  = 'PUBLISH' or 'SPUBLISH' (Redis Cluster: sharded pub/sub)
--   ARGV[4..13] = config, positional (decoding a JSON object on every call
--                 cost ~5 us of Redis CPU): node, ct (connect timeout ms),
--                 gr (grace ms), tt (tombstone ttl ms), ms (max sockets),
--                 it (idempotency ttl ms), mn (max notices), nt (default
--                 notice ttl ms), epoch, ge (global epoch key, '' on a cluster)
--   ARGV[14] = request JSON
--   ARGV[15..17] = the due-index keys and the tenant, for the wrapper in
--                 store.rs ('' on a cluster: the node updates the index)
--   ARGV[18..19] = the event log's bounds: max events, max age (ms)
--   ARGV[20]     = the write counter this node has seen (on a cluster the
--                 tenant's, '' when not remembered; the wrapper in store.rs
--                 checks and counts it)
--   ARGV[21]     = '1' when store.rs sends the call a second time (it may
--                 have run: see claimed_before), else ''
--   ARGV[22]     = on a cluster, how long (ms) the tenant's claims wait after
--                 the wrapper found its shard lost writes ('rc')
-- Records: s:<sid> = {s = session, k = sockets [{n = node, c = conn,
-- t = attached at}], dl}. Notices live out of the record (see q_read).
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local PUB = ARGV[3]
-- Kept as strings (tonumber costs ~2,000 instructions in Redis' Lua):
-- arithmetic coerces them, SET ... PX takes them as they are, and the two
-- comparisons (ms, mn) convert where they compare.
local C = {node = ARGV[4], ct = ARGV[5], gr = ARGV[6], tt = ARGV[7], ms = ARGV[8],
  it = ARGV[9], mn = ARGV[10], nt = ARGV[11], epoch = ARGV[12], ge = ARGV[13]}
local R = cjson.decode(ARGV[14])

local function jget(k)
  local v = redis.call('GET', k)
  if v then return cjson.decode(v) end
  return nil
end
local function rec(sid) return jget(P .. 's:' .. sid) end
local function put(r) redis.call('SET', P .. 's:' .. r.s.id, cjson.encode(r)) end
-- put(r) around the session's JSON `sj`, already encoded for a message or
-- the reply. Returns the notices' JSON.
local function put_j(r, sj)
  local k = '[]'
  if #r.k > 0 then k = cjson.encode(r.k) end
  redis.call('SET', P .. 's:' .. r.s.id, '{"s":' .. sj .. ',"k":' .. k .. ',"dl":' .. r.dl .. '}')
end
local function tomb(sid) return jget(P .. 't:' .. sid) end

-- Queued notices stay out of the session record, so no script that
-- touches a session decodes or re-encodes them: a session's queue is
-- 'q:<sid>', a login's without a session (its mailbox) 'm:<login>', each a
-- string of lines "<notice id> TAB <body id> TAB <expires at> TAB <bytes>",
-- oldest first, living as long as its longest-lived notice. Numbers stay
-- text (cjson prints 2^62 as 4.6116860184274e+18). A body is 'nb:<body
-- id>', the notice's JSON as the node wrote it, never decoded here, with
-- its own expiry; a body id starting with 'p' is one notice's own, any
-- other a tenant-wide notice's, stored once and shared.
-- Returns the entries and how many lines did not parse (reported, so the
-- node logs and counts them).
local function q_read(key)
  local q, bad = {}, 0
  local v = redis.call('GET', key)
  if not v then return q, 0 end
  for line in string.gmatch(v, '[^\n]+') do
    local id, b, exp, sz = string.match(line, '^([^\t]+)\t([^\t]+)\t(%d+)\t(%d+)$')
    if id then table.insert(q, {id = id, b = b, exp = exp, sz = tonumber(sz)})
    else bad = bad + 1 end
  end
  return q, bad
end
-- Drops a body nothing else shares.
local function q_forget(x)
  if string.sub(x.b, 1, 1) == 'p' then redis.call('DEL', P .. 'nb:' .. x.b) end
end
local function q_write(key, q)
  if #q == 0 then redis.call('DEL', key); return end
  local lines, last = {}, 0
  for i, x in ipairs(q) do
    lines[i] = x.id .. '\t' .. x.b .. '\t' .. x.exp .. '\t' .. x.sz
    local e = tonumber(x.exp)
    if e > last then last = e end
  end
  redis.call('SET', key, table.concat(lines, '\n'), 'PX', math.max(1, last - NOW))
end
-- Adds or replaces (same id) entry `n`; drops expired entries and then
-- the oldest while more than C.mn entries or `maxb` bytes are queued
-- (registry::notice_rules::push on the embedded side).
local function q_push(q, n, maxb)
  local out, bytes = {}, n.sz
  for _, x in ipairs(q) do
    if x.id ~= n.id and tonumber(x.exp) > NOW then
      table.insert(out, x)
      bytes = bytes + x.sz
    elseif x.b ~= n.b then q_forget(x) end
  end
  table.insert(out, n)
  local max, first = tonumber(C.mn), 1
  while (#out - first + 1 > max or bytes > maxb) and first < #out do
    bytes = bytes - out[first].sz
    q_forget(out[first])
    first = first + 1
  end
  if first == 1 then return out end
  local kept = {}
  for i = first, #out do table.insert(kept, out[i]) end
  return kept
end
-- The bodies of the unexpired entries, oldest first, as a JSON array of
-- strings (a body is never spliced in as JSON: one mangled body must not
-- make the whole reply unreadable); a body gone before its entry is
-- skipped.
local function q_bodies(q)
  local keys = {}
  for _, x in ipairs(q) do
    if tonumber(x.exp) > NOW then table.insert(keys, P .. 'nb:' .. x.b) end
  end
  if #keys == 0 then return '[]' end
  local out = {}
  for _, b in ipairs(redis.call('MGET', unpack(keys))) do
    if b then table.insert(out, b) end
  end
  if #out == 0 then return '[]' end
  return cjson.encode(out)
end
-- Events about a session go to the channels of the nodes holding its
-- sockets, `<ns>:{<tenant>}:ev:<node>` (node ids need no escaping:
-- letters, digits and . _ @ + : -): no other node is woken by them.
local function emit_nodes(k, json)
  local done = {}
  for _, sock in ipairs(k) do
    if not done[sock.n] then
      done[sock.n] = true
      redis.call(PUB, P .. 'ev:' .. sock.n, json)
    end
  end
end
-- Presence goes to its own channel: only nodes with presence watchers
-- subscribe to it, so a sign-in storm does not flood every node.
-- Messages and records that embed a session are spliced around its JSON
-- (`sj`), encoded once per script: cjson encoding is a large share of a
-- script's Redis CPU.
-- Every presence event is first appended to the tenant's event log, the
-- stream `log`, in this script, so its order is the state's. Each event
-- carries the tenant's sequence number (`"q":n`, the last member of its
-- JSON; `lsq`.n is the last one given). A script's events are written
-- once, as ONE stream entry (fields `e`, one per event, in order), by
-- log_flush, which the wrapper in store.rs calls after the body: a
-- takeover's two or three events cost one HINCRBY, one XADD and one
-- PEXPIRE (more than three, a sweep's, are an entry each). Entry ids are
-- Redis's own (`*`: never go back, whatever the nodes' clocks); log.lua
-- finds sequence numbers in the events.
-- Trimmed by length (ARGV[18] entries, MAXLEN ~) and age (ARGV[19] ms,
-- MINID ~); an idle tenant's stream expires with its last event.
local LOG = nil
local function log_j(body)
  local seq
  if LOG then
    seq = LOG.seq + 1
  else
    seq = redis.call('HINCRBY', P .. 'lsq', 'n', 1)
    LOG = {first = seq, ev = {}}
  end
  LOG.seq = seq
  local ej = '{"k":"p",' .. body .. ',"q":' .. seq .. '}'
  local ev = LOG.ev
  ev[#ev + 1] = 'e'
  ev[#ev + 1] = ej
  return ej
end
local function log_flush()
  if not LOG then return end
  local lk = P .. 'log'
  if LOG.seq > LOG.first then
    redis.call('HINCRBY', P .. 'lsq', 'n', LOG.seq - LOG.first)
  end
  -- A sequence starting again (Redis lost `lsq` but not the stream)
  -- starts a new stream: readers behind it are told the log was trimmed.
  if LOG.first == 1 then redis.call('DEL', lk) end
  local id
  if LOG.seq - LOG.first < 3 then
    id = redis.call('XADD', lk, 'MAXLEN', '~', ARGV[18], '*', unpack(LOG.ev))
  else
    -- A sweep (an expiry pass, a reaped node, a tenant-wide evict): one
    -- entry per event, so the length bound, which counts entries, holds
    -- at most 3 events per entry kept.
    for i = 2, #LOG.ev, 2 do
      id = redis.call('XADD', lk, 'MAXLEN', '~', ARGV[18], '*', 'e', LOG.ev[i])
    end
  end
  -- By age (on the stream's clock, its ids) when the sequence passes a
  -- multiple of 32: the approximate trim rarely has a whole stream node
  -- to drop, and this is a claim's hottest path.
  if math.floor(LOG.seq / 32) > math.floor((LOG.first - 1) / 32) then
    local ms = string.match(id, '^(%d+)')
    redis.call('XTRIM', lk, 'MINID', '~', string.format('%d', ms - ARGV[19]))
  end
  redis.call('PEXPIRE', lk, ARGV[19])
end
-- `extra`: more fields of the event (an ending's `by` and `msg`).
local function presence_j(sj, change, extra)
  redis.call(PUB, P .. 'pr', log_j('"s":' .. sj .. ',"c":"' .. change .. '","at":' .. ARGV[2] .. (extra or '')))
end
local function presence(s, change) presence_j(cjson.encode(s), change) end
local function fenced(node)
  return redis.call('EXISTS', P .. 'dead:' .. node) == 1
end
local function err(code, extra)
  local e = extra or {}
  e.err = code
  return cjson.encode(e)
end
local function count(t) local n = 0; for _ in pairs(t) do n = n + 1 end; return n end

-- Removes the sockets of `node` (all, or only conn `conn`; with `before`,
-- only those attached before it); keeps the per-node index right. Returns
-- how many were removed, and whether `node` still has one.
local function drop_sockets(r, node, conn, before)
  local keep, removed, others = {}, 0, false
  for _, k in ipairs(r.k) do
    if k.n == node and (conn == nil or k.c == conn)
        and (before == nil or k.t == nil or k.t < before) then
      removed = removed + 1
    else
      table.insert(keep, k)
      if k.n == node then others = true end
    end
  end
  r.k = keep
  if removed > 0 and not others then redis.call('SREM', P .. 'n:' .. node, r.s.id) end
  return removed, others
end

-- The last socket left: DISCONNECTED until grace runs out.
local function disconnect(r)
  r.s.state = 'disconnected'
  r.dl = NOW + C.gr
  redis.call('ZADD', P .. 'dl', r.dl, r.s.id)
  presence(r.s, 'disconnected')
end

-- Stations: 'st:<station>' is the first holder's sid. A shared station's
-- other holders (claims from the first holder's device, `s.dev`), in the
-- order they claimed it, are the list 'sh:<station>', which exists only
-- beside 'st:' and holds at most limits::MAX_STATION_HOLDERS - 1. A session
-- without a device never shares, so it costs no call beyond 'st:'.
-- The holders of `st`, first first, as session tables; `first` is the
-- record under 'st:' when the caller has it.
local function station_holders(st, first)
  if not first then
    local id = redis.call('GET', P .. 'st:' .. st)
    first = id and rec(id)
  end
  if not first then return {} end
  local out = {first.s}
  if first.s.dev then
    for _, id in ipairs(redis.call('LRANGE', P .. 'sh:' .. st, 0, -1)) do
      local r = rec(id)
      if r then table.insert(out, r.s) end
    end
  end
  return out
end
-- The one place a station's info is built (StationStatus, ListStations in
-- read.lua): {hs = every holder {l = login, id = sid, d = device}}, empty
-- when free.
local function station_info(st)
  local hs = {}
  for _, s in ipairs(station_holders(st)) do
    table.insert(hs, {l = s.login, id = s.id, d = s.dev or ''})
  end
  return {hs = hs}
end
-- Takes session `s` off its station: the next sharer becomes the first
-- holder; the station is free when its last holder leaves.
local function station_leave(s)
  local k = P .. 'st:' .. s.station
  local first = redis.call('GET', k) == s.id
  if not s.dev then
    if first then redis.call('DEL', k) end
    return
  end
  local shk = P .. 'sh:' .. s.station
  if first then
    local nxt = redis.call('LPOP', shk)
    if nxt then redis.call('SET', k, nxt) else redis.call('DEL', k) end
  else
    redis.call('LREM', shk, 1, s.id)
  end
end

-- Ends a live session: frees its login and station, leaves a tombstone,
-- tells every node (forced logout) and every watcher (presence). Returns
-- the ended session and its JSON.
local function finish(r, reason, by, message)
  local s = r.s
  redis.call('DEL', P .. 's:' .. s.id)
  local q, bad = q_read(P .. 'q:' .. s.id)
  if #q > 0 or bad > 0 then
    for _, x in ipairs(q) do q_forget(x) end
    redis.call('DEL', P .. 'q:' .. s.id)
  end
  if redis.call('GET', P .. 'l:' .. s.login) == s.id then redis.call('DEL', P .. 'l:' .. s.login) end
  if s.station ~= '' then station_leave(s) end
  redis.call('ZREM', P .. 'live', s.id)
  redis.call('ZREM', P .. 'dl', s.id)
  for _, k in ipairs(r.k) do redis.call('SREM', P .. 'n:' .. k.n, s.id) end
  s.state = 'ended'
  s.reason = reason
  s.seen = NOW
  local sj = cjson.encode(s)
  local ending = ',"by":' .. cjson.encode(by) .. ',"msg":' .. cjson.encode(message or '')
  local tj = '{"s":' .. sj .. ',"reason":"' .. reason .. '"' .. ending .. '}'
  redis.call('SET', P .. 't:' .. s.id, tj, 'PX', C.tt)
  emit_nodes(r.k, '{"k":"e","t":' .. tj .. '}')
  presence_j(sj, 'ended', ending)
  return s, sj
end

-- The tenant's epoch marker. A script that creates tenant state calls this
-- first: when the calling node knew the tenant (R.kep) and the marker is
-- gone, Redis lost data and nothing may be granted until nodes re-assert.
-- On a cluster 'rc' beside it holds the tenant's claims while nodes
-- re-assert after its shard lost writes (set with the marker kept, see
-- store.rs; one command either way).
local function ensure_epoch()
  -- (MGET, not a count of EXISTS: a count cannot tell 'rc' without the
  -- marker from the marker alone)
  local v = redis.call('MGET', P .. 'ep', P .. 'rc')
  if v[2] then return err('recovering') end
  if v[1] then return nil end
  if R.kep then return err('dataloss') end
  redis.call('SET', P .. 'ep', C.epoch)
  return nil
end

-- Generations (Generation::next in session.rs): one more than the login's
-- counter, never below a floor time raises, ms x 10, so a counter Redis
-- lost (restart, failover to a replica that was behind) starts again above
-- every generation granted before. The floor's clock is the earlier of
-- Redis's own (TIME) and the caller's registry clock, which follows
-- Redis's to half a round trip: a node whose clock runs ahead cannot push
-- generations beyond what the floor reaches after a loss, and on a test's
-- manual clock (set in the past) the embedded and Redis registries agree.
-- Stays below 1e14, which Lua prints exactly (14 significant digits).
-- (Arithmetic coerces TIME's and GET's strings: no tonumber, see C.)
local function next_generation(login)
  local t = redis.call('TIME')
  local ms = t[1] * 1000 + math.floor(t[2] / 1000)
  if NOW < ms then ms = NOW end
  local k = P .. 'g:' .. login
  local g = (redis.call('GET', k) or 0) + 1
  if g < ms * 10 then g = ms * 10 end
  redis.call('SET', k, g)
  return g
end

-- A claim run a second time for one request: the node resends a claim
-- whose connection reset, not knowing whether it ran (ARGV[21] says so:
-- only then is this asked, a first send's session id being new). The session id a
-- claim carries is minted for that one request (its implicit request id),
-- so a record or tombstone under it means the request was granted already:
-- answers that grant (the session as it is now, and whom it displaced), or
-- nil.
local function claimed_before(sid)
  if redis.call('EXISTS', P .. 's:' .. sid, P .. 't:' .. sid) == 0 then return nil end
  local r = rec(sid) or tomb(sid)
  if not r then return nil end
  local ev = redis.call('GET', P .. 'r:' .. sid) or ''
  return '{"o":"granted","s":' .. cjson.encode(r.s) .. ',"ev":[' .. ev .. ']}'
end
-- What a grant displaced (the sessions' JSON), kept for claimed_before as
-- long as the grant may be waited for (connect timeout).
local function remember_evicted(sid, evj)
  if #evj > 0 then
    redis.call('SET', P .. 'r:' .. sid, table.concat(evj, ','), 'PX', C.ct)
  end
end
