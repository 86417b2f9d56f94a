// Viewer page: watch.html?room=CODE.
//
// Flow (docs/protocol.md, "Viewer subscribe"): open the WebSocket and `join` as viewer.
// The server drives negotiation: it sends an `offer` on join and again whenever the
// room's tracks change; we answer each one on the same peer connection. A closed
// WebSocket or a failed peer connection tears everything down and joins again with
// backoff; an unknown room is retried slowly until the host creates it.
import { Signaling } from './signaling.js';
import { Subscriber } from './rtc.js';
import { readInbound, wirePlayerControls } from './player.js';
import { initTv } from './tv.js';

initTv();

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'), roomLabel: $('room-label'), video: $('video'), overlay: $('overlay'),
  liveBadge: $('live-badge'), unmute: $('unmute'), fullscreen: $('fullscreen'),
  viewerCount: $('viewer-count'), stats: $('stats'), error: $('error'), codeForm: $('code-form'),
};

/** How often to ask again for a room that does not exist (yet). */
const ROOM_NOT_FOUND_RETRY_MS = 10_000;
/** Errors after which retrying cannot help. */
const FATAL_CODES = new Set(['unsupported_version', 'invalid_room', 'not_allowed']);
/** Errors that mean "try again later", with the delay to wait. */
const RETRY_CODES = { full: 15_000, shutting_down: 3_000, room_not_found: ROOM_NOT_FOUND_RETRY_MS };
const STATS_INTERVAL_MS = 2_000;

const CONN_TEXT = { idle: 'Offline', connecting: 'Connecting…', open: 'Connected', closed: 'Reconnecting…' };
const params = new URLSearchParams(location.search);
const room = params.get('room')?.replace(/\s+/g, '').toUpperCase() || '';

const state = {
  room,
  peerId: null,
  ws: 'idle',
  pc: 'new',
  media: null,
  /** Null until the first roomState. */
  live: null,
  viewerCount: 0,
  playing: false,
  /** A condition shown over the video instead of the default text, e.g. room not found. */
  notice: null,
  error: null,
  fatal: false,
  /** Sessions joined so far (1 on a healthy page) and stalled media paths restarted. */
  joins: 0,
  stalls: 0,
};

const signaling = new Signaling();
/** The peer connection of the current session; it answers the server's offers. */
const subscriber = new Subscriber(signaling, 'watch');
let failures = 0;

window.marquee = {
  state,
  signaling,
  get pc() { return subscriber.pc; },
  get stream() { return subscriber.stream; },
};

// ---- UI wiring -------------------------------------------------------------------

if (!room) {
  // No code: ask for one instead of connecting.
  document.querySelector('.stage').hidden = true;
  document.querySelector('.controls').hidden = true;
  ui.codeForm.hidden = false;
  ui.codeForm.querySelector('input').focus();
} else {
  document.title = `${room} · Marquee`;
  ui.roomLabel.textContent = `Event ${room}`;
  signaling.start();
}

wirePlayerControls(ui, () => { state.playing = true; }, render);
render();

// ---- Signaling -------------------------------------------------------------------

signaling.addEventListener('statechange', (e) => {
  state.ws = e.detail.state;
  render();
});

signaling.addEventListener('open', () => {
  signaling.join({ role: 'viewer', room, name: localStorage.getItem('marquee.name') || 'Viewer' });
});

signaling.addEventListener('close', () => {
  teardown();
  render();
});

signaling.addEventListener('joined', (e) => {
  state.joins++;
  state.peerId = e.detail.peerId;
  state.notice = null;
  state.error = null;
  render();
});

signaling.addEventListener('offer', (e) => {
  // Offers are applied strictly in order; a renegotiation waits for the previous answer.
  subscriber.handleOffer(e.detail.sdp);
});

signaling.addEventListener('roomState', (e) => {
  state.live = e.detail.live;
  state.viewerCount = e.detail.viewerCount;
  render();
});

signaling.addEventListener('mediaState', (e) => {
  state.media = e.detail.state;
  render();
});

signaling.addEventListener('error', (e) => {
  const { code, message } = e.detail;
  console.warn('[watch] server error', code, message);
  if (code === 'room_not_found') {
    teardown();
    state.notice = `There is no event with code ${room} (yet). Checking again every ${ROOM_NOT_FOUND_RETRY_MS / 1000} s…`;
    signaling.restart(ROOM_NOT_FOUND_RETRY_MS);
  } else if (FATAL_CODES.has(code)) {
    teardown();
    signaling.stop();
    state.fatal = true;
    state.notice = code === 'invalid_room'
      ? `"${room}" is not a valid event code.`
      : code === 'unsupported_version' ? 'This page is out of date: reload it.' : `${message} (${code})`;
  } else if (code in RETRY_CODES) {
    teardown();
    state.notice = `${message} (${code}). Retrying…`;
    signaling.restart(RETRY_CODES[code]);
  } else {
    state.error = `${message} (${code})`;
  }
  render();
});

// ---- Media -------------------------------------------------------------------------

subscriber.addEventListener('statechange', (e) => {
  state.pc = e.detail.state;
  if (state.pc === 'connected') {
    failures = 0;
    state.error = null; // e.g. an unusable candidate that did not matter in the end
  }
  render();
});
subscriber.addEventListener('failed', (e) => restartSession(e.detail.reason));
subscriber.addEventListener('stream', (e) => {
  const { stream } = e.detail;
  ui.video.srcObject = stream;
  // Muted autoplay is allowed everywhere; the Unmute button turns sound on.
  if (stream) ui.video.play().catch((err) => console.warn('[watch] play() refused:', err.message));
  render();
});

/** Ends this session and joins again, backing off on repeated failures. */
function restartSession(why) {
  const delay = Math.min(10_000, 1_000 * 2 ** failures++);
  console.warn(`[watch] ${why}; rejoining in ${delay} ms`);
  teardown();
  state.notice = `${why}. Reconnecting…`;
  signaling.restart(delay);
  render();
}

function teardown() {
  subscriber.close();
  state.pc = 'new';
  state.media = null;
  state.playing = false;
  state.live = null;
  ui.video.srcObject = null;
}

// ---- Stats line and stall watchdog ---------------------------------------------------

/**
 * A connected peer connection that receives no RTP at all for this long while the room is
 * live has silently lost its media path (a NAT rebinding, a server following the wrong ICE
 * pair): start over rather than show a frozen picture forever. Audio alone flows at ~50
 * packets/s, so this never fires on a healthy stream.
 */
const MEDIA_STALL_MS = 10_000;
let lastBytes = null;
let lastPackets = { count: -1, at: 0 };
let stallRestarts = 0;
setInterval(async () => {
  const mine = subscriber.pc;
  if (!mine) {
    ui.stats.textContent = '';
    lastBytes = null;
    lastPackets = { count: -1, at: 0 };
    return;
  }
  const stats = await mine.getStats();
  if (mine !== subscriber.pc) return;
  const { packets, line, video } = readInbound(stats, lastBytes);
  lastBytes = video;
  if (line !== null) ui.stats.textContent = line;
  const now = performance.now();
  const receiving = state.live && mine.connectionState === 'connected' && subscriber.received.length > 0;
  if (!receiving || packets !== lastPackets.count) {
    if (packets > lastPackets.count && lastPackets.count >= 0) stallRestarts = 0;
    lastPackets = { count: packets, at: now };
  } else if (now - lastPackets.at > MEDIA_STALL_MS) {
    state.stalls++;
    const delay = Math.min(30_000, 1_000 * 2 ** stallRestarts++);
    console.warn(`[watch] no media for ${MEDIA_STALL_MS} ms while live; rejoining in ${delay} ms`);
    teardown();
    state.notice = 'The stream stalled. Reconnecting…';
    signaling.restart(delay);
    render();
  }
}, STATS_INTERVAL_MS);

// ---- Rendering -----------------------------------------------------------------------

function render() {
  let conn = state.ws;
  let text = CONN_TEXT[state.ws];
  if (state.ws === 'open' && state.pc === 'connected' && state.live) {
    conn = 'live';
    text = 'Live';
  }
  if (state.fatal) {
    conn = 'error';
    text = 'Stopped';
  }
  ui.conn.dataset.state = conn;
  ui.conn.textContent = text;

  const hasVideo = state.playing && ui.video.videoWidth > 0;
  let overlay = null;
  if (state.notice) overlay = state.notice;
  else if (state.ws !== 'open') overlay = state.ws === 'closed' ? 'Connection lost. Reconnecting…' : 'Connecting…';
  else if (state.live === false) overlay = 'Waiting for the host to go live…';
  else if (!hasVideo) overlay = 'Connecting to the stream…';
  ui.overlay.hidden = overlay === null;
  ui.overlay.textContent = overlay ?? '';
  ui.liveBadge.hidden = !(state.live && hasVideo);

  ui.unmute.textContent = ui.video.muted ? 'Unmute' : 'Mute';
  ui.unmute.setAttribute('aria-pressed', String(!ui.video.muted));
  ui.viewerCount.textContent = String(state.viewerCount);
  ui.error.hidden = !state.error;
  ui.error.textContent = state.error ?? '';
}
