#!/bin/bash
# Redis instructions per cross-node takeover (callgrind on redis-server, deterministic; the
# redis-server binary is stripped, so the whole process is counted while the run lasts).
# usage: docs/bench/redis-instructions.sh tag=path/to/turnstile ...   (env K = takeovers, default 300)
KEY=$(head -c 32 /dev/urandom | base64)
LT=${LT:-target/release/turnstile-loadtest}
wait_ready() { for _ in $(seq 600); do curl -sf http://127.0.0.1:$1/readyz >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 600); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
for tb in "$@"; do
  tag=${tb%%=*}; BIN=${tb#*=}
  rm -f /tmp/cg-$tag.out
  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-$tag.out --instr-atstart=no redis-server --port 7790 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & rp=$!
  wait_port 7790
  $BIN serve --signing-key "$KEY" --node a --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7710 --grpc-listen 127.0.0.1:7711 >/dev/null 2>&1 & a=$!
  $BIN serve --signing-key "$KEY" --node b --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7720 --grpc-listen 127.0.0.1:7721 >/dev/null 2>&1 & b=$!
  wait_ready 7710; wait_ready 7720
  redis-cli -p 7790 config resetstat >/dev/null
  callgrind_control -i on $rp >/dev/null
  if [ -n "$IDLE" ]; then sleep $IDLE; else $LT takeover --grpc 127.0.0.1:7711 --grpc 127.0.0.1:7721 --ws 127.0.0.1:7710 --ws 127.0.0.1:7720 --k ${K:-300} --quiet --json /tmp/cg-$tag.json >/dev/null 2>&1; fi
  callgrind_control -i off $rp >/dev/null
  calls=$(redis-cli -p 7790 info commandstats | grep -E 'cmdstat_evalsha' | sed 's/.*calls=\([0-9]*\),.*/\1/')
  kill $a $b; wait $a $b 2>/dev/null
  redis-cli -p 7790 shutdown nosave >/dev/null 2>&1; wait $rp 2>/dev/null
  ir=$(callgrind_annotate /tmp/cg-$tag.out 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
  echo "$tag evalsha_calls=$calls Ir=$ir Ir_per_takeover=$(( ir / ${K:-300} ))"
done
