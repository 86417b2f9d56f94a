// Controls shared by the two viewer pages (watch over the WebSocket, WHEP): unmute and
// fullscreen buttons, and a re-render whenever the video starts, resizes or changes volume.

/**
 * @param {{video: HTMLVideoElement, unmute: HTMLElement, fullscreen: HTMLElement}} ui
 * @param {() => void} onPlaying called when the video starts playing, before `render`
 * @param {() => void} render the page's render function
 */
export function wirePlayerControls(ui, onPlaying, render) {
  ui.unmute.addEventListener('click', () => {
    ui.video.muted = !ui.video.muted;
    ui.video.play().catch(() => {});
    render();
  });
  ui.fullscreen.addEventListener('click', () => {
    const stage = document.querySelector('.stage');
    if (document.fullscreenElement) document.exitFullscreen();
    else (stage.requestFullscreen?.() ?? ui.video.webkitEnterFullscreen?.());
  });
  ui.video.addEventListener('playing', () => { onPlaying(); render(); });
  ui.video.addEventListener('resize', render);
  ui.video.addEventListener('volumechange', render);
}

/**
 * One reading of a receiving peer connection's stats for the viewer pages:
 * - `packets`: inbound RTP packets of every track (what the stall watchdogs watch);
 * - `relayed`: whether the selected candidate pair goes through TURN;
 * - `line`: "1280×720 30 fps · 1500 kbps" for the video, or null without video stats;
 * - `video`: this reading's video bytes and time, for the next call's bitrate (`prev`).
 * @param {RTCStatsReport} stats
 * @param {{bytes: number, at: number} | null} prev
 */
export function readInbound(stats, prev) {
  let packets = 0;
  let relayed = false;
  let line = null;
  let video = prev;
  for (const s of stats.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      relayed = stats.get(pair?.localCandidateId)?.candidateType === 'relay';
    }
    if (s.type !== 'inbound-rtp') continue;
    packets += s.packetsReceived ?? 0;
    if (s.kind !== 'video') continue;
    const rate = video ? ` · ${Math.round(((s.bytesReceived - video.bytes) * 8) / (s.timestamp - video.at))} kbps` : '';
    video = { bytes: s.bytesReceived, at: s.timestamp };
    const fps = s.framesPerSecond ? ` ${Math.round(s.framesPerSecond)} fps` : '';
    line = s.frameWidth ? `${s.frameWidth}×${s.frameHeight}${fps}${rate}` : '';
  }
  return { packets, relayed, line, video };
}
