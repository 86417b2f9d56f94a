// Viewer page: watch.html?room=CODE.
//
// Flow (docs/protocol.md, "Viewer subscribe"): open the WebSocket and `join` as viewer.
// The server drives negotiation: it sends an `offer` on join and again whenever the
// room's tracks change; we answer each one on the same peer connection. A closed
// WebSocket or a failed peer connection tears everything down and joins again with
// backoff; an unknown room is retried slowly until the host creates it.
import { Signaling } from './signaling.js';
import { initTv } from './tv.js';

initTv();

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'), roomLabel: $('room-label'), video: $('video'), overlay: $('overlay'),
  liveBadge: $('live-badge'), unmute: $('unmute'), fullscreen: $('fullscreen'),
  viewerCount: $('viewer-count'), stats: $('stats'), error: $('error'), codeForm: $('code-form'),
};

/** A peer connection that stays `disconnected` this long is treated as failed. */
const DISCONNECTED_GRACE_MS = 5_000;
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
let pc = null;
/** Tracks of the current peer connection's receivers, in arrival order. */
let received = [];
/** What the <video> element plays: the newest live video track and audio track. */
let remote = new MediaStream();
let pendingCandidates = [];
let answerSent = false;
let negotiation = Promise.resolve();
let disconnectTimer = null;
let failures = 0;

window.marquee = {
  state,
  signaling,
  get pc() { return pc; },
  get stream() { return remote; },
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
ui.video.addEventListener('playing', () => { state.playing = true; render(); });
ui.video.addEventListener('resize', render);
ui.video.addEventListener('volumechange', render);
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
  const { sdp } = e.detail;
  // Offers are applied strictly in order; a renegotiation waits for the previous answer.
  negotiation = negotiation.then(() => answerOffer(sdp));
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

function createPc() {
  const mine = new RTCPeerConnection();
  pc = mine;
  answerSent = false;
  pendingCandidates = [];
  mine.onicecandidate = (e) => {
    if (mine !== pc || !e.candidate) return;
    if (answerSent) signaling.candidate(e.candidate);
    else pendingCandidates.push(e.candidate);
  };
  mine.ontrack = (e) => {
    if (mine !== pc) return;
    addRemoteTrack(e.track);
  };
  mine.onconnectionstatechange = () => {
    if (mine !== pc) return;
    state.pc = mine.connectionState;
    onPcState(mine.connectionState);
    render();
  };
}

async function answerOffer(sdp) {
  if (!pc) createPc();
  const mine = pc;
  try {
    await mine.setRemoteDescription({ type: 'offer', sdp });
    await mine.setLocalDescription(await mine.createAnswer());
  } catch (err) {
    if (mine !== pc) return; // torn down meanwhile: nothing to repair
    console.error('[watch] negotiation failed', err);
    restartSession(`Could not apply the server's offer (${err.message})`);
    return;
  }
  if (mine !== pc) return;
  signaling.answer(mine.localDescription.sdp);
  if (!answerSent) {
    answerSent = true;
    for (const c of pendingCandidates) signaling.candidate(c);
    pendingCandidates = [];
  }
  syncRemoteTracks();
}

/** `ontrack` fires inside setRemoteDescription; the element is updated once negotiation ends. */
function addRemoteTrack(track) {
  if (received.includes(track)) return;
  received.push(track);
  track.addEventListener('ended', syncRemoteTracks);
}

/** After a (re)negotiation: forget tracks whose m-line no longer receives, then attach. */
function syncRemoteTracks() {
  if (!pc) return;
  const receiving = new Set(pc.getTransceivers()
    .filter((t) => !t.stopped && (t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv'))
    .map((t) => t.receiver.track));
  received = received.filter((t) => receiving.has(t) && t.readyState === 'live');
  attach();
}

/**
 * Plays the newest video and the newest audio track. A room has one host source of each
 * kind; should a renegotiation leave an older m-line around, the newest one is the live one.
 */
function attach() {
  const newest = (kind) => received.filter((t) => t.kind === kind).at(-1);
  const chosen = [newest('video'), newest('audio')].filter(Boolean);
  const playing = remote.getTracks();
  if (chosen.length === playing.length && chosen.every((t) => playing.includes(t))) return;
  // A fresh stream makes the element pick up the new set of tracks.
  remote = new MediaStream(chosen);
  ui.video.srcObject = chosen.length ? remote : null;
  // Muted autoplay is allowed everywhere; the Unmute button turns sound on.
  if (chosen.length) ui.video.play().catch((err) => console.warn('[watch] play() refused:', err.message));
  render();
}

function onPcState(s) {
  clearTimeout(disconnectTimer);
  if (s === 'connected') {
    failures = 0;
    state.error = null; // e.g. an unusable candidate that did not matter in the end
  } else if (s === 'failed') {
    restartSession('Media connection failed');
  } else if (s === 'disconnected') {
    disconnectTimer = setTimeout(() => restartSession('Media connection lost'), DISCONNECTED_GRACE_MS);
  }
}

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
  clearTimeout(disconnectTimer);
  if (pc) {
    pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
  }
  pc = null;
  negotiation = Promise.resolve();
  state.pc = 'new';
  state.media = null;
  state.playing = false;
  state.live = null;
  received = [];
  remote = new MediaStream();
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
  if (!pc) {
    ui.stats.textContent = '';
    lastBytes = null;
    lastPackets = { count: -1, at: 0 };
    return;
  }
  const mine = pc;
  const stats = await mine.getStats();
  if (mine !== pc) return;
  let packets = 0;
  for (const s of stats.values()) {
    if (s.type !== 'inbound-rtp') continue;
    packets += s.packetsReceived ?? 0;
    if (s.kind !== 'video') continue;
    const rate = lastBytes ? ` · ${Math.round(((s.bytesReceived - lastBytes.bytes) * 8) / (s.timestamp - lastBytes.at))} kbps` : '';
    lastBytes = { bytes: s.bytesReceived, at: s.timestamp };
    const fps = s.framesPerSecond ? ` ${Math.round(s.framesPerSecond)} fps` : '';
    ui.stats.textContent = s.frameWidth ? `${s.frameWidth}×${s.frameHeight}${fps}${rate}` : '';
  }
  const now = performance.now();
  const receiving = state.live && mine.connectionState === 'connected' && received.length > 0;
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
