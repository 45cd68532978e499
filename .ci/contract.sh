#!/usr/bin/env bash
# Guards the gRPC contract, proto/turnstile/v1/broker.proto:
#   1. `buf lint` with the STANDARD rules (exceptions, with reasons, in buf.yaml)
#      and `buf format` (the file stays in buf's layout);
#   2. `buf breaking` (FILE rules) against the last released contract, the
#      image committed as proto/turnstile/v1/broker.released.yaml;
#   3. a self-test: copies of the proto with a renumbered field, a removed
#      enum value and a changed field type must each FAIL step 2, so a
#      misconfigured check cannot pass by checking nothing.
#
#   .ci/contract.sh            run the checks (called by .ci/run)
#   .ci/contract.sh --release  rewrite the released image from the current
#                              proto: only when a release is cut, or when a
#                              break is accepted on purpose (say so in the
#                              commit and in CHANGELOG.md)
#
# buf comes from the npm registry (@bufbuild/buf, a binary inside the
# package). A buf of the pinned version on PATH is used; otherwise it is
# installed under target/tools (ignored by git, like the rest of target/).
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
IMAGE=proto/turnstile/v1/broker.released.yaml

if command -v buf >/dev/null 2>&1 && [ "$(buf --version 2>/dev/null)" = "$BUF_VERSION" ]; then
  BUF=buf
else
  BUF=target/tools/node_modules/.bin/buf
  if [ ! -x "$BUF" ] || [ "$("$BUF" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    echo "installing buf $BUF_VERSION (npm: @bufbuild/buf) under target/tools" >&2
    mkdir -p target/tools
    npm install --prefix target/tools --no-save --no-audit --no-fund --loglevel=error \
      "@bufbuild/buf@$BUF_VERSION" >/dev/null
  fi
fi

if [ "${1:-}" = "--release" ]; then
  "$BUF" build --exclude-source-info -o "$IMAGE"
  echo "wrote $IMAGE from the current proto; commit it with the release" >&2
  exit 0
fi

echo "== buf lint / format" >&2
"$BUF" lint
"$BUF" format --diff --exit-code

echo "== buf breaking against $IMAGE" >&2
"$BUF" breaking --against "$IMAGE"

# The self-test: each mutation must change the file (or the test is stale)
# and must be refused by buf breaking, naming what broke.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
expect_break() { # expect_break <what> <sed expression> <word the finding names>
  rm -rf "$tmp/case" && mkdir -p "$tmp/case"
  cp buf.yaml "$tmp/case/" && cp -r proto "$tmp/case/"
  sed -i -e "$2" "$tmp/case/proto/turnstile/v1/broker.proto"
  if cmp -s proto/turnstile/v1/broker.proto "$tmp/case/proto/turnstile/v1/broker.proto"; then
    echo "contract self-test is stale: '$2' no longer changes broker.proto ($1)" >&2
    exit 1
  fi
  if out="$("$BUF" breaking "$tmp/case" --against "$IMAGE" 2>&1)"; then
    echo "buf breaking accepted $1; it must fail" >&2
    exit 1
  fi
  if ! grep -q "$3" <<<"$out"; then
    echo "buf breaking refused $1 but did not name $3:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "ok: buf breaking refuses $1" >&2
}
expect_break "a renumbered field (ClaimRequest.login 2 -> 20)" \
  's/^  string login = 2;$/  string login = 20;/' 'login'
expect_break "a removed enum value (CONFLICT_POLICY_TAKEOVER)" \
  '/^  CONFLICT_POLICY_TAKEOVER = 2;$/d' 'ConflictPolicy'
expect_break "a changed field type (Session.generation uint64 -> int64)" \
  's/^  uint64 generation = 7;$/  int64 generation = 7;/' 'generation'
echo "contract: lint clean, no breaking change against $IMAGE, self-test passed" >&2
