#!/bin/bash
# Redis commands per cross-node takeover (INFO commandstats), for each build.
# usage: docs/bench/redis-commands.sh tag=path/to/turnstile ...   (env K, default 500; writes /tmp/cm-<tag>.txt)
KEY=$(head -c 32 /dev/urandom | base64)
LT=${LT:-target/release/turnstile-loadtest}
K=${K:-500}
wait_ready() { for _ in $(seq 600); do curl -sf http://127.0.0.1:$1/readyz >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 600); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
for tb in "$@"; do
  tag=${tb%%=*}; BIN=${tb#*=}
  redis-server --port 7790 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & rp=$!
  wait_port 7790
  $BIN serve --signing-key "$KEY" --node a --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7710 --grpc-listen 127.0.0.1:7711 >/dev/null 2>&1 & a=$!
  $BIN serve --signing-key "$KEY" --node b --redis redis://127.0.0.1:7790 --http-listen 127.0.0.1:7720 --grpc-listen 127.0.0.1:7721 >/dev/null 2>&1 & b=$!
  wait_ready 7710; wait_ready 7720
  redis-cli -p 7790 config resetstat >/dev/null
  $LT takeover --grpc 127.0.0.1:7711 --grpc 127.0.0.1:7721 --ws 127.0.0.1:7710 --ws 127.0.0.1:7720 --k $K --quiet --json /tmp/cm-$tag.json >/dev/null 2>&1
  redis-cli -p 7790 info commandstats | tr -d '\r' | grep cmdstat | sed 's/cmdstat_\([a-z|]*\):calls=\([0-9]*\),.*/\1 \2/' | awk -v k=$K -v t=$tag '{printf "%s %s %.2f\n", t, $1, $2/k}' > /tmp/cm-$tag.txt
  kill $a $b; wait $a $b 2>/dev/null; redis-cli -p 7790 shutdown nosave >/dev/null 2>&1; wait $rp 2>/dev/null
done
