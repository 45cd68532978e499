# A/B of the two ways to notice lost writes (issue 16, item 2), Redis side:
# a claim-sized script alone, with the write counter of store.rs around it,
# and followed by `WAIT 1 100`, against a master with one replica started
# here. Usage: python3 loadtest/scripts/lost_writes_ab.py [claims per run]
import socket, subprocess, time, sys, os, statistics, tempfile

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def enc(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port)); self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
    def read(self):
        line = self.f.readline()
        t = line[:1]
        if t in b"+-:": return line[1:-2]
        if t == b"$":
            n = int(line[1:-2])
            if n < 0: return None
            d = self.f.read(n + 2); return d[:-2]
        if t == b"*":
            n = int(line[1:-2]); return [self.read() for _ in range(n)]
        raise Exception(line)
    def cmd(self, *a):
        self.s.sendall(enc(*a)); return self.read()

def start(port, extra=()):
    d = tempfile.mkdtemp()
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d, *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try: Conn(port).cmd("PING"); return p
        except Exception: time.sleep(0.02)
    raise Exception("redis did not start")

# A claim-sized script: ~13 key operations and two JSON decodes, as claim.lua.
BODY = """
local R = cjson.decode(ARGV[2])
local h = redis.call('GET', KEYS[1] .. ':l:' .. R.login)
local s = {id = R.sid, login = R.login, station = '', client = 'desktop', role = 'agent', gen = 0,
  state = 'pending', created = 1, seen = 1, node = 'n1', attrs = {}, status = '', reason = ''}
s.gen = redis.call('INCR', KEYS[1] .. ':g:' .. R.login)
redis.call('DEL', KEYS[1] .. ':m:' .. R.login)
local sj = cjson.encode(s)
redis.call('SET', KEYS[1] .. ':s:' .. R.sid, '{"s":' .. sj .. ',"k":[],"nt":[],"dl":0}')
redis.call('SET', KEYS[1] .. ':l:' .. R.login, R.sid)
redis.call('ZADD', KEYS[1] .. ':live', 0, R.sid)
redis.call('ZADD', KEYS[1] .. ':dl', 1, R.sid)
redis.call('PUBLISH', KEYS[1] .. ':pr', sj)
local x = cjson.decode('{"a":1,"b":[1,2,3],"c":"x"}')
redis.call('DEL', KEYS[1] .. ':s:' .. R.sid)
redis.call('ZREM', KEYS[1] .. ':live', R.sid)
redis.call('ZREM', KEYS[1] .. ':dl', R.sid)
"""
COUNTER = """
local wc_key = ARGV[3] .. ':wc'
if tonumber(redis.call('GET', wc_key) or '0') < tonumber(ARGV[4]) then return 'lostwrites' end
"""
TAIL_A = "return {'ok', '', '', ''}"
TAIL_B = "return {'ok', '', '', tostring(redis.call('INCR', wc_key))}"

def run(c, script, n, wait):
    sha = c.cmd("SCRIPT", "LOAD", script).decode()
    lat = []
    cpu0 = float(dict(l.split(":", 1) for l in c.cmd("INFO", "cpu").decode().split("\r\n") if ":" in l)["used_cpu_user"])
    for i in range(n):
        t = time.perf_counter()
        r = c.cmd("EVALSHA", sha, 1, "ts:{acme}", "x", '{"login":"u%d","sid":"s%d"}' % (i % 1000, i), "ts:{nodes}:epoch", "0")
        if wait:
            c.cmd("WAIT", 1, 100)
        lat.append(time.perf_counter() - t)
    cpu1 = float(dict(l.split(":", 1) for l in c.cmd("INFO", "cpu").decode().split("\r\n") if ":" in l)["used_cpu_user"])
    lat.sort()
    return lat[len(lat)//2] * 1e6, lat[int(len(lat)*0.99)] * 1e6, (cpu1 - cpu0) / n * 1e6

mp, rp = free_port(), free_port()
m = start(mp); r = start(rp, ["--replicaof", "127.0.0.1", str(mp)])
try:
    c = Conn(mp)
    for _ in range(200):
        if b"connected_slaves:1" in c.cmd("INFO", "replication"): break
        time.sleep(0.05)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    variants = [("none", BODY + TAIL_A, False), ("counter", COUNTER + BODY + TAIL_B, False), ("WAIT 1", BODY + TAIL_A, True)]
    res = {v[0]: [] for v in variants}
    for rnd in range(5):
        for name, script, wait in variants:
            res[name].append(run(c, script, n, wait))
    for name, rs in res.items():
        print(name, " | ".join("p50 %.0f us p99 %.0f us redis-cpu %.1f us" % x for x in rs)); print("  median", ["%.1f" % statistics.median(x[i] for x in rs) for i in range(3)])
finally:
    m.kill(); r.kill()
