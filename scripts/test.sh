#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Linux machine with Rust:
#   - installs what is missing (Debian's chromium for the browser tests, npm packages),
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

ensure_npm_packages() {
    if [ -d web-demo/node_modules/playwright-core ]; then return 0; fi
    say "installing web-demo npm packages"
    (cd web-demo && npm ci --no-audit --no-fund --loglevel=error)
}

passed=0
failed=0
status=0

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
