#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Linux machine with Rust:
#   - installs what is missing (Debian's redis-server and chromium, npm packages),
#   - makes sure a Redis server is reachable (MARQUEE_TEST_REDIS_URL, default
#     redis://127.0.0.1:6379); when none is, starts one on a free port for this run,
#   - checks the workspace's dependency directions (scripts/check-layers.sh),
#   - runs the Rust tests (unit, virtual-time core tests, in-process integration tests),
#   - runs the real-browser tests (headless Chromium driven by playwright-core),
#   - prints one summary line: "N passed, N failed".
# Usage: scripts/test.sh            (from anywhere inside the repository)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"

say() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then return 0; fi
    say "installing Debian's chromium (browser tests)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# The interop tests run Debian's GStreamer `whip-client` and `coturn` in a network namespace
# of their own (root, iproute2) with a stub library built by `cc`.
ensure_interop_tools() {
    if command -v whip-client >/dev/null && command -v turnserver >/dev/null \
        && command -v cc >/dev/null && command -v ip >/dev/null; then return 0; fi
    say "installing whip-client, coturn, gcc and iproute2 (WHIP interop and TURN tests)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        simple-whip-client coturn gcc libc6-dev iproute2 >/dev/null
}

ensure_redis_server_binary() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then return 0; fi
    say "installing Debian's redis-server (store tests, multi-node tests)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

redis_reachable() {
    # RESP PING over bash's /dev/tcp: needs nothing installed.
    local host=$1 port=$2
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null | grep -q PONG
}

# Exports MARQUEE_TEST_REDIS_URL pointing at a live Redis, starting one when needed.
ensure_redis() {
    local url=${MARQUEE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
    local hostport=${url#redis://}; hostport=${hostport%%/*}
    if redis_reachable "${hostport%:*}" "${hostport##*:}"; then
        export MARQUEE_TEST_REDIS_URL=$url
        return 0
    fi
    ensure_redis_server_binary || return 1
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
    REDIS_DIR=$(mktemp -d)
    say "no Redis at $url; starting redis-server on 127.0.0.1:$port for this run"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
        --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" || return 1
    for _ in $(seq 50); do
        redis_reachable 127.0.0.1 "$port" && break
        sleep 0.1
    done
    redis_reachable 127.0.0.1 "$port" || return 1
    export MARQUEE_TEST_REDIS_URL="redis://127.0.0.1:$port"
    trap 'kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
}

ensure_npm_packages() {
    if [ -d web-demo/node_modules/playwright-core ]; then return 0; fi
    say "installing web-demo npm packages"
    (cd web-demo && npm ci --no-audit --no-fund --loglevel=error)
}

passed=0
failed=0
status=0

if ! ensure_redis; then
    echo "could not reach or start a Redis server; the Redis tests will fail"
fi
# The Redis restart test starts redis-server itself.
ensure_redis_server_binary || echo "redis-server is missing; the Redis restart test will fail"
echo "Redis for tests: ${MARQUEE_TEST_REDIS_URL:-none}"

say "dependency directions (docs/architecture.md)"
scripts/check-layers.sh 2>&1 | tee "$LOG_DIR/layers.log"
passed=$((passed + $(grep -c '^ok ' "$LOG_DIR/layers.log")))
layers_failed=$(grep -c '^not ok ' "$LOG_DIR/layers.log")
failed=$((failed + layers_failed))
[ "$layers_failed" -eq 0 ] || status=1

say "cargo test --workspace"
cargo test --workspace --color never 2>&1 | tee "$LOG_DIR/cargo.log"
cargo_status=${PIPESTATUS[0]}
while read -r p f; do
    passed=$((passed + p)); failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$LOG_DIR/cargo.log")
if [ "$cargo_status" -ne 0 ]; then
    status=1
    # A crate that failed to compile reports no result line; count it as a failure.
    grep -q '^test result:' "$LOG_DIR/cargo.log" || failed=$((failed + 1))
fi

say "browser tests (headless Chromium)"
ensure_interop_tools || echo "could not install whip-client/coturn; the WHIP interop and TURN tests will fail"
if ensure_chromium && ensure_npm_packages && cargo build --bin marquee --color never; then
    MARQUEE_BIN="$ROOT/target/debug/marquee" node --test --test-concurrency=1 --test-reporter=tap web-demo/tests/ 2>&1 \
        | tee "$LOG_DIR/browser.log"
    node_status=${PIPESTATUS[0]}
    p=$(sed -nE 's/^# pass ([0-9]+)$/\1/p' "$LOG_DIR/browser.log" | tail -1)
    f=$(sed -nE 's/^# fail ([0-9]+)$/\1/p' "$LOG_DIR/browser.log" | tail -1)
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
    if [ "$node_status" -ne 0 ]; then
        status=1
        [ -z "$p" ] && failed=$((failed + 1))
    fi
else
    echo "browser tests could not be set up (see above)"
    failed=$((failed + 1)); status=1
fi

echo
echo "${passed} passed, ${failed} failed"
exit "$status"
