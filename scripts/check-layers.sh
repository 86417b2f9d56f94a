#!/usr/bin/env bash
# The workspace's dependency directions (docs/architecture.md), checked on `cargo tree`'s
# normal (non-dev) edges. Prints one "ok"/"not ok" line per rule and exits non-zero if any
# rule is broken.
#   - the party core and the media plane never reach each other or the edge;
#   - the protocol crate is a leaf of the workspace;
#   - clients never reach the server's crates (nor axum, the server's HTTP stack);
#   - signaling's modules import one another without a circle.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
# check CRATE FORBIDDEN... : CRATE's normal dependency tree contains none of FORBIDDEN.
check() {
    local crate=$1; shift
    local pattern
    pattern="^($(IFS='|'; echo "$*")) v"
    local found
    found=$(cargo tree -e normal -p "$crate" --prefix none --format '{p}' 2>&1 | grep -E "$pattern" | sort -u)
    if [ -z "$found" ]; then
        echo "ok - $crate does not depend on: $*"
    else
        echo "not ok - $crate depends on: $(echo "$found" | tr '\n' ' ')"
        failed=$((failed + 1))
    fi
}

check sfu sync signaling redis marquee-client
check sync sfu signaling marquee-client rtc
check marquee-protocol sync sfu signaling redis
check marquee-client signaling sfu axum
check loadtest signaling sfu axum

# Inside `signaling`, modules import one another without a circle (`lib.rs`, the composition
# root, and `main.rs` aside; a submodule counts as its parent): each can be read alone.
edges=$(for f in signaling/src/*.rs signaling/src/*/*.rs; do
    module=$(basename "${f%.rs}")
    parent=$(basename "$(dirname "$f")")
    [ "$parent" != src ] && module=$parent
    case $module in lib | main) continue ;; esac
    grep -oE 'crate::[a-z_]+' "$f" | sed 's/^crate:://' | sort -u | while read -r target; do
        if [ -f "signaling/src/$target.rs" ] && [ "$target" != "$module" ]; then
            echo "$module $target"
        fi
    done
done)
if loops=$(echo "$edges" | tsort 2>&1 >/dev/null) && [ -z "$loops" ]; then
    echo "ok - signaling's modules import one another without a circle"
else
    echo "not ok - signaling has an import circle: $(echo "$loops" | tr '\n' ' ')"
    failed=$((failed + 1))
fi
exit $((failed > 0))
