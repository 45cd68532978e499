#!/usr/bin/env bash
# What each feature costs the cross-node takeover: the same cluster run (two nodes over one
# Redis, `takeover --k 1500`) for several broker builds, alternating, 3 rounds; medians.
# usage: docs/bench/ab-features.sh tag=path/to/turnstile ...   (one loadtest build for all)
set -u
LT=${LT:-target/release/turnstile-loadtest}
OUT=/tmp/ab-features; mkdir -p $OUT
KEY=$(head -c 32 /dev/urandom | base64)
wait_ready() { for _ in $(seq 200); do curl -sf http://127.0.0.1:$1/readyz >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
run() { # tag binary round
  redis-server --port 7790 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  local rp=$!; wait_port 7790
  $2 serve --signing-key "$KEY" --node a --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7710 --grpc-listen 127.0.0.1:7711 >/dev/null 2>&1 &
  local a=$!
  $2 serve --signing-key "$KEY" --node b --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7720 --grpc-listen 127.0.0.1:7721 >/dev/null 2>&1 &
  local b=$!; wait_ready 7710; wait_ready 7720
  $LT takeover --grpc 127.0.0.1:7711 --grpc 127.0.0.1:7721 --ws 127.0.0.1:7710 --ws 127.0.0.1:7720 --k 1500 --quiet --json $OUT/$1-$3.json >/dev/null 2>&1
  kill $a $b; wait $a $b 2>/dev/null; kill $rp; wait $rp 2>/dev/null
}
R=${ROUNDS:-3}
for r in $(seq $R); do for tb in "$@"; do run "${tb%%=*}" "${tb#*=}" $r; done; done
python3 - "$@" <<'PY'
import json,sys,statistics as st
for tb in sys.argv[1:]:
  tag=tb.split('=')[0]; p50=[];p99=[]
  for r in range(1, int(__import__('os').environ.get('ROUNDS','3'))+1):
    lat=json.load(open(f'/tmp/ab-features/{tag}-{r}.json'))['latencies']['claim_to_forced_logout']
    p50.append(lat['p50_us']); p99.append(lat['p99_us'])
  print(f"{tag}: p50 {st.median(p50)} {p50}  p99 {st.median(p99)} {p99}")
PY
