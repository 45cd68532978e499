-- Rules 1-3 in one step. R = {sid, login, station, client, role, policy,
-- attrs, idem, kep, exp (expected holder, absent: any), seats (the
-- configured seat limit, 0: none; the key `seats` overrides it), dev (the
-- device, absent: none), sh (with dev when the tenant shares stations: the
-- most holders a station may have), strict (absent: the tenant's directory
-- is not strict)}.
-- Returns {o = 'granted'|'login'|'station'|'seats'|'unregistered', s, ev,
-- h, hs (station: every holder), used, limit}.
if ARGV[21] == '1' then
  -- Sent a second time (store.rs resends once after a reset connection):
  -- the first may have run. A first send's session id is new.
  local again = claimed_before(R.sid)
  if again then return again end
end
if C.ge ~= '' then
  -- One Redis (not a cluster): refuse while the data set is being rebuilt
  -- (after a loss: until every node noticed and re-asserted, bounded).
  local g = redis.call('MGET', C.ge, C.ge .. ':recovering', C.ge .. ':reasserting')
  if not g[1] then return err('noepoch') end
  if g[2] or g[3] then return err('recovering') end
end
local lost = ensure_epoch()
if lost then return lost end

if R.idem ~= '' then
  local prev = jget(P .. 'i:' .. R.idem)
  if prev then
    if prev.login ~= R.login then return err('idem', {login = prev.login}) end
    if prev.o == 'granted' then
      local cur = rec(prev.s.id)
      if cur then prev.s = cur.s else
        local t = tomb(prev.s.id)
        if t then prev.s = t.s end
      end
    end
    prev.login = nil
    return cjson.encode(prev)
  end
end

local out
if R.strict and R.station ~= '' and not redis.call('ZSCORE', P .. 'sd', R.station) then
  out = {o = 'unregistered'}
elseif R.station ~= '' then
  local hid = redis.call('GET', P .. 'st:' .. R.station)
  local h = hid and rec(hid)
  if h then
    -- Holders of other logins refuse the claim unless it joins them: the
    -- tenant shares (R.sh), the claim comes from their device, and there
    -- is room. A holder without a device has no sharers (no call here).
    local others = 0
    if h.s.login ~= R.login then others = 1 end
    if h.s.dev and (others == 0 or (R.sh and R.dev == h.s.dev)) then
      local shk = P .. 'sh:' .. R.station
      local n = redis.call('LLEN', shk)
      if n > 0 and others == 1 then
        -- Sharers other than this login's own session.
        local lid = redis.call('GET', P .. 'l:' .. R.login)
        if lid and redis.call('LPOS', shk, lid) then n = n - 1 end
      end
      others = others + n
    end
    if others > 0 and not (R.sh and R.dev == h.s.dev and others < R.sh) then
      out = {o = 'station', h = h.s, hs = station_holders(R.station, h)}
    end
  end
end

if not out then
  local evicted, evj = {}, {}
  local hid = redis.call('GET', P .. 'l:' .. R.login)
  local h = hid and rec(hid)
  -- The holder stays unless the policy ends it and it is the session the
  -- user was shown (exp); takeover_if_disconnected spares a connected one.
  -- Without a holder to take over the claim needs a new seat.
  local lim = not h and tonumber(redis.call('GET', P .. 'seats') or R.seats)
  local used = lim and lim > 0 and redis.call('ZCARD', P .. 'live')
  if h and (R.policy == 'reject' or (R.exp and R.exp ~= hid)
      or (R.policy == 'takeover_if_disconnected' and h.s.state == 'connected')) then
    out = {o = 'login', h = h.s}
  elseif used and used >= lim then
    out = {o = 'seats', used = used, limit = lim}
  else
    if h then
      local reason = 'superseded'
      if R.station ~= '' and R.station ~= h.s.station then reason = 'station_changed' end
      local es, esj = finish(h, reason,
        {client = R.client, station = R.station, sid = R.sid, at = NOW}, '')
      table.insert(evicted, es)
      table.insert(evj, esj)
    end
    local gen = next_generation(R.login)
    local s = {id = R.sid, login = R.login, station = R.station, client = R.client,
      role = R.role, gen = gen, state = 'pending', created = NOW, seen = NOW,
      node = C.node, attrs = R.attrs, status = '', reason = '', dev = R.dev}
    -- The login's mailbox becomes the session's queue (expired entries
    -- are skipped when read).
    if redis.call('EXISTS', P .. 'm:' .. R.login) == 1 then
      redis.call('RENAME', P .. 'm:' .. R.login, P .. 'q:' .. R.sid)
    end
    local r = {s = s, k = {}, dl = NOW + C.ct}
    local sj = cjson.encode(s)
    put_j(r, sj)
    redis.call('SET', P .. 'l:' .. R.login, R.sid)
    if R.station ~= '' then
      -- Held still only by the holders this claim joins (R.sh, same device);
      -- a first holder whose record is gone is replaced.
      local cur = R.sh and redis.call('GET', P .. 'st:' .. R.station)
      if cur and redis.call('EXISTS', P .. 's:' .. cur) == 1 then
        redis.call('RPUSH', P .. 'sh:' .. R.station, R.sid)
      else
        redis.call('SET', P .. 'st:' .. R.station, R.sid)
      end
    end
    redis.call('ZADD', P .. 'live', 0, R.sid)
    redis.call('ZADD', P .. 'dl', r.dl, R.sid)
    presence_j(sj, 'claimed')
    remember_evicted(R.sid, evj)
    if R.idem == '' then
      return '{"o":"granted","s":' .. sj .. ',"ev":[' .. table.concat(evj, ',') .. ']}'
    end
    out = {o = 'granted', s = s, ev = evicted}
  end
end

if R.idem ~= '' then
  out.login = R.login
  redis.call('SET', P .. 'i:' .. R.idem, cjson.encode(out), 'PX', C.it)
  out.login = nil
end
return cjson.encode(out)
