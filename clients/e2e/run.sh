#!/usr/bin/env bash
# The clients' tests: the browser SDK's unit tests (node --test, clients/js)
# and the browser tests of `turnstile demo` in headless Chromium
# (clients/e2e). Installs what is missing — Chromium with apt-get, the node
# modules with npm ci — and builds the binary the browser tests start.
#
# Env: CHROMIUM (default /usr/bin/chromium), TURNSTILE_BIN (default
# target/debug/turnstile, built here when unset).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMIUM

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "clients/e2e/run.sh: node 20+ and npm are needed (https://nodejs.org or your distribution)" >&2
  exit 1
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "clients/e2e/run.sh: node $(node --version) is too old; node 20+ is needed" >&2
  exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
  echo "installing chromium (apt-get)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ -z "${TURNSTILE_BIN:-}" ]; then
  (cd "$REPO" && cargo build --locked --bin turnstile)
fi

echo "== clients/js: SDK unit tests" >&2
(cd "$REPO/clients/js" && timeout 120 node --test)

echo "== clients/e2e: browser tests (screenshots in clients/e2e/screenshots/)" >&2
cd "$HERE"
npm ci --no-audit --no-fund --loglevel=error
timeout 600 node --test --test-concurrency=1 test/demo.test.js test/tabs.test.js
