#!/bin/sh
# A private network for peers that refuse loopback (libnice: whip-client, webrtcbin), as the
# tests make it (GUIDE §3): namespace NAME with lo up and a veth pair v0 10.99.0.1/24,
# v1 10.99.0.2/24. Traffic never leaves the namespace.
#
#   scripts/interop/netns.sh up   [NAME]    (default NAME: marquee-interop)
#   ip netns exec NAME target/debug/marquee --dev --http 10.99.0.1:8080 --udp 10.99.0.1:0 --no-loopback
#   scripts/interop/whip-client.sh NAME http://10.99.0.1:8080/whip/ROOM [TOKEN] [VP8|H264]
#   scripts/interop/netns.sh down [NAME]    (kills what still runs inside, deletes it)
set -eu
cmd=${1:-}
ns=${2:-marquee-interop}
case "$cmd" in
  up)
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add v0 type veth peer name v1
    ip -n "$ns" addr add 10.99.0.1/24 dev v0
    ip -n "$ns" addr add 10.99.0.2/24 dev v1
    ip -n "$ns" link set v0 up
    ip -n "$ns" link set v1 up
    echo "namespace $ns: 10.99.0.1 (v0), 10.99.0.2 (v1)"
    ;;
  down)
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
    ;;
  *)
    echo "usage: $0 up|down [NAME]" >&2
    exit 2
    ;;
esac
