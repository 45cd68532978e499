#!/usr/bin/env bash
# A/B of claim and takeover latency: base (BASE, a release dir; default ../base/target/release)
# vs new (NEW, default target/release), one loadtest build (the new one) for both, alternating,
# ROUNDS rounds (default 3), single node (embedded registry) and a 2-node cluster on one Redis.
set -u
B=${BASE:-../base/target/release}; N=${NEW:-target/release}
OUT=/tmp/ab-session; mkdir -p $OUT
KEY=$(head -c 32 /dev/urandom | base64)
wait_ready() { for _ in $(seq 200); do curl -sf http://127.0.0.1:$1/readyz >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
single() { # build tag round
  local bin=$1/turnstile lt=$N/turnstile-loadtest tag=$2 r=$3
  $bin serve --signing-key "$KEY" --http-listen 127.0.0.1:7700 --grpc-listen 127.0.0.1:7701 >/dev/null 2>&1 &
  local pid=$!; wait_port 7701; wait_port 7700
  $lt claim --n 5000 --in-flight 1 --quiet --json $OUT/single-claim-$tag-$r.json >/dev/null 2>&1
  $lt takeover --k 1500 --quiet --json $OUT/single-takeover-$tag-$r.json >/dev/null 2>&1
  kill $pid; wait $pid 2>/dev/null
}
cluster() {
  local bin=$1/turnstile lt=$N/turnstile-loadtest tag=$2 r=$3
  redis-server --port 7790 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  local rp=$!; wait_port 7790
  $bin serve --signing-key "$KEY" --node a --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7710 --grpc-listen 127.0.0.1:7711 >/dev/null 2>&1 &
  local a=$!
  $bin serve --signing-key "$KEY" --node b --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7720 --grpc-listen 127.0.0.1:7721 >/dev/null 2>&1 &
  local b=$!; wait_port 7711; wait_port 7721; wait_ready 7710; wait_ready 7720
  $lt claim --grpc 127.0.0.1:7711 --ws 127.0.0.1:7710 --n 3000 --in-flight 1 --quiet --json $OUT/cluster-claim-$tag-$r.json >/dev/null 2>&1
  $lt takeover --grpc 127.0.0.1:7711 --grpc 127.0.0.1:7721 --ws 127.0.0.1:7710 --ws 127.0.0.1:7720 --k 1500 --quiet --json $OUT/cluster-takeover-$tag-$r.json >/dev/null 2>&1
  kill $a $b; wait $a $b 2>/dev/null; kill $rp; wait $rp 2>/dev/null
}
for r in $(seq ${ROUNDS:-3}); do
  single $B base $r; single $N new $r
  cluster $B base $r; cluster $N new $r
done
python3 - <<'PY'
import json,glob,statistics as st
O='/tmp/ab-session'
for mode in ['single','cluster']:
  for sc,key in [('claim','claim'),('takeover','claim_to_forced_logout')]:
    row=[]
    for tag in ['base','new']:
      p50=[];p99=[]
      for r in range(1, 10):
        try: j=json.load(open(f'{O}/{mode}-{sc}-{tag}-{r}.json'))
        except Exception as e: continue
        lat=j['latencies']; k=key if key in lat else list(lat)[0]
        p50.append(lat[k]['p50_us']); p99.append(lat[k]['p99_us'])
      row.append((p50,p99))
    (b50,b99),(n50,n99)=row
    if b50 and n50:
      print(f"{mode} {sc}: base p50 {st.median(b50)} {b50} p99 {st.median(b99)} {b99} | new p50 {st.median(n50)} {n50} p99 {st.median(n99)} {n99} | ratio p50 {st.median(n50)/st.median(b50):.2f} p99 {st.median(n99)/st.median(b99):.2f}")
    else: print(mode,sc,'missing',row)
PY
