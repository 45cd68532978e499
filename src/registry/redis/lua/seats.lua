-- Seat licences. R = {limit (absent: read only), seats (the configured
-- limit, 0: none)}. The key `seats` holds a limit set by SetSeatLimit; it
-- overrides the configured one. Returns {used, limit}.
if R.limit then redis.call('SET', P .. 'seats', R.limit) end
local lim = tonumber(redis.call('GET', P .. 'seats') or R.seats)
return cjson.encode({used = redis.call('ZCARD', P .. 'live'), limit = lim})
