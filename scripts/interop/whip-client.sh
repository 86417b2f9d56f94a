#!/bin/sh
# Runs Debian's whip-client (package simple-whip-client) inside network namespace NS,
# publishing a moving test pattern and a tone, with the libgupnp-igd stand-in that stops
# it aborting on bookworm ("libsoup2 symbols detected"; see gupnp-igd-stub.c).
#
#   scripts/interop/whip-client.sh NS URL [TOKEN] [VP8|H264] [extra whip-client flags…]
set -eu
if [ $# -lt 2 ]; then
  echo "usage: $0 NS URL [TOKEN] [VP8|H264] [whip-client flags…]" >&2
  exit 2
fi
ns=$1 url=$2 token=${3:-} codec=${4:-VP8}
[ $# -ge 4 ] && shift 4 || shift $#
here=$(cd "$(dirname "$0")" && pwd)
lib=${TMPDIR:-/tmp}/marquee-gupnp-igd-stub
if [ ! -e "$lib/libgupnp-igd-1.0.so.4" ] || [ "$here/gupnp-igd-stub.c" -nt "$lib/libgupnp-igd-1.0.so.4" ]; then
  mkdir -p "$lib"
  cc -shared -fPIC -O2 -Wall -Wl,-soname,libgupnp-igd-1.0.so.4 -o "$lib/libgupnp-igd-1.0.so.4" "$here/gupnp-igd-stub.c"
fi
src='videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert ! queue'
case "$codec" in
  VP8) video="$src ! vp8enc deadline=1 target-bitrate=800000 ! rtpvp8pay pt=96 ssrc=2 ! queue ! application/x-rtp,media=video,encoding-name=VP8,payload=96" ;;
  H264) video="$src ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=800 key-int-max=60 ! video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 ssrc=2 config-interval=-1 aggregate-mode=zero-latency ! queue ! application/x-rtp,media=video,encoding-name=H264,payload=102" ;;
  *) echo "codec must be VP8 or H264" >&2; exit 2 ;;
esac
audio='audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! queue ! opusenc ! rtpopuspay pt=100 ssrc=1 ! queue ! application/x-rtp,media=audio,encoding-name=OPUS,payload=100'
set -- -u "$url" -o -L -A "$audio" -V "$video" "$@"
[ -n "$token" ] && set -- -t "$token" "$@"
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec ip netns exec "$ns" whip-client "$@"
