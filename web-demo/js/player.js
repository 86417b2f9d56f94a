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
