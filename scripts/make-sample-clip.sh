#!/usr/bin/env bash
# Regenerates web-demo/media/sample.webm, the demo and test clip of watch parties:
# 40 s of a test pattern with a running timecode (so two screens can be compared by eye)
# and a 1 kHz beep each second, VP8 + Opus in WebM (plays in every browser), a keyframe every
# second so seeks land quickly. Needs ffmpeg (Debian: apt-get install ffmpeg).
set -euo pipefail
cd "$(dirname "$0")/.."
ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=320x180:rate=25:duration=40" \
    -f lavfi -i "sine=frequency=1000:beep_factor=4:duration=40:sample_rate=48000" \
    -vf "drawtext=text='%{pts\:hms}':x=10:y=10:fontsize=28:fontcolor=white:box=1:boxcolor=black@0.6" \
    -c:v libvpx -b:v 70k -g 25 -keyint_min 25 -deadline good -cpu-used 4 \
    -c:a libopus -b:a 16k \
    web-demo/media/sample.webm
ls -l web-demo/media/sample.webm
