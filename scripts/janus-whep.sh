#!/usr/bin/env bash
# A Janus baseline for load-test comparisons: Janus 1.4 (streaming plugin only) with Meetecho's
# WHEP server (npm janus-whep-server) in front, fed by a GStreamer test stream (VP8 + Opus over
# plain RTP), all on loopback. Point the load test at the printed URL:
#
#   scripts/janus-whep.sh start     # installs/builds what is missing, prints WHEP_URL and JANUS_PID
#   loadtest --whep "$WHEP_URL" --server-pid "$JANUS_PID" ...
#   scripts/janus-whep.sh stop
#   scripts/janus-whep.sh status
#
# Settings (environment, all optional):
#   JANUS_WHEP_DIR     installs: Janus build, npm package    (default /tmp/janus-whep)
#   JANUS_WHEP_STATE   run state: config, pids, logs         (default /tmp/janus-whep-state)
#   WHEP_PORT          WHEP HTTP port on 127.0.0.1           (default 7090)
#   JANUS_WS_PORT      Janus WebSocket API port on 127.0.0.1 (default 8188)
#   VIDEO_SIZE         WIDTHxHEIGHT of the test video        (default 960x540)
#   VIDEO_BITRATE      VP8 target bit rate, bit/s            (default 1500000)
#   JANUS_DEBUG_LEVEL  Janus log level 0-7                   (default 3: errors and warnings)
#   JANUS_EVENT_LOOPS  Janus event loops (0 = Janus default, one thread per handle)
set -euo pipefail

WHEP_DIR=${JANUS_WHEP_DIR:-/tmp/janus-whep}
STATE=${JANUS_WHEP_STATE:-/tmp/janus-whep-state}
WHEP_PORT=${WHEP_PORT:-7090}
JANUS_WS_PORT=${JANUS_WS_PORT:-8188}
VIDEO_SIZE=${VIDEO_SIZE:-960x540}
VIDEO_BITRATE=${VIDEO_BITRATE:-1500000}
JANUS_DEBUG_LEVEL=${JANUS_DEBUG_LEVEL:-3}
JANUS_EVENT_LOOPS=${JANUS_EVENT_LOOPS:-0}
JANUS_PREFIX=$WHEP_DIR/janus
JANUS=$JANUS_PREFIX/bin/janus
# Fixed by the mountpoint below: the ports GStreamer sends RTP to, and the payload types.
VIDEO_RTP_PORT=5004
AUDIO_RTP_PORT=5002
ENDPOINT_ID=live     # WHEP endpoint id, served as /whep/endpoint/live
MOUNTPOINT_ID=1      # Janus streaming mountpoint it subscribes to
WHEP_PKG=janus-whep-server@1.1.0   # pinned: the version this script was written against
WHEP_URL="http://127.0.0.1:${WHEP_PORT}/whep/endpoint/${ENDPOINT_ID}"

log() { echo "janus-whep: $*" >&2; }

# ---------------------------------------------------------------- install
# Why Janus is built here rather than taken from bookworm's `janus` package (1.1.2):
#  - a WHEP viewer sends the offer, and the streaming plugin answers offers only from Janus
#    1.1.4 on (janus-gateway PR 3199); 1.1.2 ignores the offer and returns an offer of its
#    own, which a WHEP client cannot apply as an answer;
#  - Janus never gathers candidates on loopback interfaces (ice.c skips IFF_LOOPBACK), and
#    this machine may only send media over loopback: the build drops that one test, so that
#    `ice_enforce_list = "lo"` yields 127.0.0.1 host candidates. Nothing else is changed.
# The source is Debian's own package from unstable (apt-get source, signed index), built with
# only the streaming plugin and the WebSocket transport against bookworm's libraries.
install_missing() {
    local pkgs=(gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-base
        gstreamer1.0-plugins-bad nodejs npm
        gcc make pkg-config autoconf automake libtool dpkg-dev libconfig-dev libglib2.0-dev
        libjansson-dev libnice-dev libsrtp2-dev libssl-dev libwebsockets-dev zlib1g-dev) missing=() p
    for p in "${pkgs[@]}"; do
        # node/npm may come from elsewhere than Debian (a newer node): only the commands matter.
        case $p in nodejs) command -v node >/dev/null && continue ;; npm) command -v npm >/dev/null && continue ;; esac
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        # A stale or empty package list finds nothing: update once and retry.
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
            { apt-get update >/dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
    [[ -x $JANUS ]] || build_janus
    if [[ ! -f $WHEP_DIR/node_modules/janus-whep-server/package.json ]]; then
        log "installing $WHEP_PKG under $WHEP_DIR"
        mkdir -p "$WHEP_DIR"
        [[ -f $WHEP_DIR/package.json ]] || echo '{ "name": "janus-whep-local", "private": true }' >"$WHEP_DIR/package.json"
        npm install --prefix "$WHEP_DIR" --no-audit --no-fund "$WHEP_PKG" >/dev/null
    fi
}

build_janus() {
    local src=$WHEP_DIR/src apt=$WHEP_DIR/apt
    log "building Janus from Debian's unstable source package into $JANUS_PREFIX (about a minute)"
    rm -rf "$src" "$apt"
    mkdir -p "$src" "$apt/lists/partial" "$apt/cache/archives/partial"
    # A private apt setup that only knows unstable's source index: the system's sources and
    # lists are left alone.
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
        >"$apt/sources.list"
    local o=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
    apt-get "${o[@]}" update >/dev/null
    (cd "$src" && apt-get "${o[@]}" source --download-only janus >/dev/null 2>&1 &&
        dpkg-source -x janus_*.dsc janus >"$src/extract.log" 2>&1) ||
        { log "could not fetch and unpack Janus's source package from Debian unstable"; exit 1; }
    # (dpkg-source cannot check the uploader's signature without debian-keyring; apt has
    # already checked the files against the signed source index.)
    # The loopback patch (see above); fail rather than build a Janus that cannot serve here.
    sed -i 's/if(ifa->ifa_flags & IFF_LOOPBACK)$/if(0 \&\& (ifa->ifa_flags \& IFF_LOOPBACK))/' "$src/janus/src/ice.c"
    grep -q 'if(0 && (ifa->ifa_flags & IFF_LOOPBACK))' "$src/janus/src/ice.c" ||
        { log "could not patch Janus's loopback test in src/ice.c"; exit 1; }
    # Niced and one job: the machine's cores are shared with other builds. (No
    # --disable-all-js-modules: in 1.4.1 that flag turns the JS modules on; they are off by
    # default.)
    # (The steps are chained with &&: `set -e` does not apply inside a `( ) || ...` group.)
    (
        cd "$src/janus" &&
        nice -n 19 ./autogen.sh &&
        nice -n 19 ./configure --prefix="$JANUS_PREFIX" --disable-docs --disable-data-channels \
            --disable-turn-rest-api --disable-post-processing \
            --disable-all-plugins --enable-plugin-streaming \
            --disable-all-transports --enable-websockets \
            --disable-all-handlers --disable-all-loggers &&
        nice -n 19 make -j1 &&
        make install
    ) >"$src/build.log" 2>&1 || { tail -30 "$src/build.log" >&2; log "Janus build failed, see $src/build.log"; exit 1; }
    log "built $("$JANUS" --version 2>/dev/null | head -1)"
}

# ---------------------------------------------------------------- Janus config
write_janus_config() {
    local conf=$STATE/conf
    rm -rf "$conf" "$STATE/empty"
    mkdir -p "$conf" "$STATE/empty"
    # The build's sample configs are copied for reference; the three files Janus reads are
    # written in full below.
    cp "$JANUS_PREFIX"/etc/janus/*.sample "$conf/"

    cat >"$conf/janus.jcfg" <<EOF
general: {
    configs_folder = "$conf"
    # Lean process: the build has only the streaming plugin and the WebSocket transport (what
    # the WHEP server's janode speaks); no event handlers or loggers.
    plugins_folder = "$JANUS_PREFIX/lib/janus/plugins"
    transports_folder = "$JANUS_PREFIX/lib/janus/transports"
    events_folder = "$STATE/empty"
    loggers_folder = "$STATE/empty"
    interface = "127.0.0.1"               # the address in the SDP's c= lines
    debug_level = $JANUS_DEBUG_LEVEL       # 3 = errors and warnings: no logging per viewer in a load test
    session_timeout = 60                  # janode sends keep-alives on its one session
    event_loops = $JANUS_EVENT_LOOPS      # 0: Janus's default, one media thread per handle (viewer)
}
certificates: {
    # No cert configured: Janus makes a self-signed DTLS certificate at startup.
}
media: {
    ipv6 = false                          # loopback IPv4 only
    rtp_port_range = "20000-40000"        # viewers' ICE/media ports, clear of 5002/5004
    dtls_mtu = 1200
    nack_optimizations = false            # stock NACK behaviour
}
nat: {
    # Loopback only: gather host candidates on lo (127.0.0.1) and nothing else (this needs the
    # build's loopback patch); no STUN/TURN, so no srflx or relay candidates. Half trickle
    # (Janus's default): the answer carries all of Janus's candidates, which is what a WHEP
    # client without trickle needs.
    ice_enforce_list = "lo"
    nice_debug = false
    ignore_mdns = true                    # a load-test client never offers .local candidates
}
plugins: {
}
transports: {
}
loggers: {
}
events: {
    broadcast = false                     # no event handlers loaded anyway
}
EOF

    cat >"$conf/janus.transport.websockets.jcfg" <<EOF
general: {
    json = "compact"                      # smallest JSON to produce and parse
    ws = true                             # the WHEP server (janode) talks to Janus here
    ws_port = $JANUS_WS_PORT
    ws_ip = "127.0.0.1"
    wss = false
}
admin: {
    admin_ws = false
    admin_wss = false
}
EOF

    cat >"$conf/janus.plugin.streaming.jcfg" <<EOF
general: {
    events = false                        # no event handlers
}
# The one mountpoint the WHEP endpoint serves: plain RTP from GStreamer on loopback.
# No RTCP port: the GStreamer source takes no PLI, so it sends a keyframe every 2 s itself.
whep-test: {
    type = "rtp"
    id = $MOUNTPOINT_ID
    description = "GStreamer test stream (VP8 + Opus)"
    audio = true
    audioport = $AUDIO_RTP_PORT
    audioiface = "127.0.0.1"
    audiopt = 111
    audiocodec = "opus"
    video = true
    videoport = $VIDEO_RTP_PORT
    videoiface = "127.0.0.1"
    videopt = 96
    videocodec = "vp8"
}
EOF
}

# ---------------------------------------------------------------- WHEP server
write_whep_server() {
    # Lives in WHEP_DIR so that its imports resolve to WHEP_DIR/node_modules.
    cat >"$WHEP_DIR/marquee-whep-server.mjs" <<'EOF'
// Meetecho's WHEP server with one endpoint for a Janus streaming mountpoint. Its own
// Express app is used (rest.app) so that the HTTP server listens on 127.0.0.1 only:
// the library's built-in server would listen on every interface.
import http from 'http';
import express from 'express';
import { JanusWhepServer } from 'janus-whep-server';

const [janusUrl, port, endpointId, mountpoint] = process.argv.slice(2);
const app = express();
const whep = new JanusWhepServer({
    janus: { address: janusUrl },
    rest: { app, basePath: '/whep' },
    allowTrickle: true,
    iceServers: [],   // no STUN/TURN Link headers: loopback only
    debug: 'warn',    // no line per viewer in a load test
});
await whep.start();   // connects to Janus and mounts /whep/* on the app
// No token: the endpoint is open (loopback only).
whep.createEndpoint({ id: endpointId, mountpoint: Number(mountpoint) });
http.createServer(app).listen(Number(port), '127.0.0.1', () => {
    console.log(`WHEP endpoint http://127.0.0.1:${port}/whep/endpoint/${endpointId} -> mountpoint ${mountpoint}`);
});
EOF
}

# ---------------------------------------------------------------- process helpers
# Runs a command in its own session (so it outlives this script and whatever process group
# called it), logging to STATE/NAME.log; the pid written is the command's own.
spawn() {
    local name=$1
    shift
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STATE/$name.pid" "$@" \
        >"$STATE/$name.log" 2>&1 </dev/null &
    local i
    for i in $(seq 50); do [[ -s $STATE/$name.pid ]] && return 0; sleep 0.1; done
    log "$name did not start"; return 1
}

alive() { [[ -s $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() { # wait_for WHAT SECONDS COMMAND...
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "timed out waiting for $what"; return 1
}

port_free() { ! ss -Hlntu "sport = :$1" | grep -q .; }

# ---------------------------------------------------------------- start / stop
start() {
    local p
    for p in janus whep gst; do
        if alive $p; then log "already running ($p, state in $STATE); run '$0 stop' first"; exit 1; fi
    done
    install_missing
    for p in "$JANUS_WS_PORT" "$WHEP_PORT" "$VIDEO_RTP_PORT" "$AUDIO_RTP_PORT"; do
        port_free "$p" || { log "port $p is in use:"; ss -Hlntup "sport = :$p" >&2; exit 1; }
    done
    mkdir -p "$STATE"
    rm -f "$STATE"/*.pid
    write_janus_config
    write_whep_server

    # 1. Janus. -F: our config dir; -o: no colour codes in the log; -D: timestamps.
    spawn janus "$JANUS" -F "$STATE/conf" -o -D
    wait_for "Janus's WebSocket API on 127.0.0.1:$JANUS_WS_PORT" 20 \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$JANUS_WS_PORT" ||
        { tail -20 "$STATE/janus.log" >&2; stop; exit 1; }

    # 2. The test stream into the mountpoint. One process, two branches:
    #  - video: a scrolling SMPTE pattern (horizontal-speed), because a still or mostly black
    #    picture (pattern=ball) encodes to ~0.2 Mbit/s whatever the target. VP8 realtime
    #    (deadline=1, cpu-used=8, one thread): ~20% of a core at 960x540. CBR at VIDEO_BITRATE;
    #    960x540 because at 1280x720 this encoder gives ~1.9 Mbit/s whatever the target (1.0,
    #    1.2 and 1.5 Mbit/s measured alike), at 960x540 it holds ~1.46 Mbit/s. A keyframe every
    #    2 s (60 frames) since nothing relays viewers' PLIs to it; pt 96 and MTU 1200 as the
    #    mountpoint and WebRTC expect.
    #  - audio: a sine tone in Opus, pt 111.
    local w=${VIDEO_SIZE%x*} h=${VIDEO_SIZE#*x}
    spawn gst gst-launch-1.0 -q \
        videotestsrc is-live=true pattern=smpte horizontal-speed=4 \
        ! "video/x-raw,width=$w,height=$h,framerate=30/1" \
        ! vp8enc deadline=1 cpu-used=8 threads=1 end-usage=cbr target-bitrate="$VIDEO_BITRATE" \
          keyframe-max-dist=60 \
        ! rtpvp8pay pt=96 mtu=1200 \
        ! udpsink host=127.0.0.1 port=$VIDEO_RTP_PORT sync=false async=false \
        audiotestsrc is-live=true wave=sine freq=440 \
        ! audioconvert ! audioresample ! "audio/x-raw,rate=48000,channels=2" \
        ! opusenc bitrate=64000 \
        ! rtpopuspay pt=111 \
        ! udpsink host=127.0.0.1 port=$AUDIO_RTP_PORT sync=false async=false

    # 3. The WHEP server; its health check answers once it is connected to Janus.
    spawn whep node "$WHEP_DIR/marquee-whep-server.mjs" \
        "ws://127.0.0.1:$JANUS_WS_PORT" "$WHEP_PORT" "$ENDPOINT_ID" "$MOUNTPOINT_ID"
    wait_for "the WHEP server on 127.0.0.1:$WHEP_PORT" 30 \
        curl -fsS "http://127.0.0.1:$WHEP_PORT/whep/healthcheck" ||
        { tail -20 "$STATE/whep.log" >&2; stop; exit 1; }

    for p in janus gst whep; do
        alive $p || { log "$p exited:"; tail -20 "$STATE/$p.log" >&2; stop; exit 1; }
    done
    log "logs and config in $STATE"
    echo "WHEP_URL=$WHEP_URL"
    echo "JANUS_PID=$(cat "$STATE/janus.pid")"
}

stop() {
    local p pid i
    # WHEP server first (it holds Janus sessions), then Janus, then the source.
    for p in whep janus gst; do
        [[ -s $STATE/$p.pid ]] || continue
        pid=$(cat "$STATE/$p.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            log "stopped $p ($pid)"
        fi
        rm -f "$STATE/$p.pid"
    done
}

status() {
    local p
    for p in janus gst whep; do
        if alive $p; then echo "$p: running, pid $(cat "$STATE/$p.pid")"; else echo "$p: not running"; fi
    done
    echo "WHEP_URL=$WHEP_URL"
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
