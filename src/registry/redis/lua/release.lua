-- Normal logout. R = {sid}. Returns {s} (an ended session returns as it ended).
local r = rec(R.sid)
if r then
  return cjson.encode({s = finish(r, 'logged_out', {client = 'logout', station = '', sid = '', at = NOW}, '')})
end
local t = tomb(R.sid)
if t then return cjson.encode({s = t.s}) end
return err('notfound')
