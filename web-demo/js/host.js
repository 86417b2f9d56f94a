// Host page: publish camera or screen (plus microphone) to the room.
//
// Flow (docs/protocol.md, "Host publish"): open the WebSocket, send `join` as host
// (with `room` from ?room= and the `hostKey` remembered for that room, so a reload
// takes the room back), then offer sendonly audio+video and apply the server's
// `answer`. Switching camera <-> screen replaces the video track in its sender and
// never renegotiates. A lost WebSocket or a failed peer connection starts a new
// session; the local camera keeps running meanwhile.
import { Signaling } from './signaling.js';
import { Publisher } from './rtc.js';
import { initTv } from './tv.js';

initTv();

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'), preview: $('preview'), previewEmpty: $('preview-empty'), liveBadge: $('live-badge'),
  name: $('name'), camera: $('source-camera'), screen: $('source-screen'),
  start: $('start'), stop: $('stop'), mute: $('mute'),
  share: $('share'), roomCode: $('room-code'), shareLink: $('share-link'), copy: $('copy'),
  viewerCount: $('viewer-count'), mediaState: $('media-state'), error: $('error'), status: $('status'),
};

/** Errors after which retrying cannot help: stop and tell the person. */
const FATAL_CODES = new Set([
  'host_already_present', 'session_replaced', 'unsupported_version', 'invalid_room', 'not_allowed', 'invalid_sdp',
]);
/** Errors that mean "try again later", with the delay to wait. */
const RETRY_CODES = { full: 15_000, shutting_down: 3_000 };

const CONN_TEXT = { idle: 'Offline', connecting: 'Connecting…', open: 'Connected', closed: 'Reconnecting…' };
const params = new URLSearchParams(location.search);
const state = {
  /** The person wants to be live: reconnects re-join and re-publish while this holds. */
  wantLive: false,
  room: params.get('room')?.trim() || null,
  peerId: null,
  source: 'camera',
  ws: 'idle',
  pc: 'new',
  media: null,
  live: false,
  viewerCount: 0,
  micMuted: false,
  /** Outbound video summary, e.g. "Sending 1280×720 30 fps · 1500 kbps". */
  sending: '',
  error: null,
  /** Sessions joined so far: 1 unless the page had to reconnect. */
  joins: 0,
};

const signaling = new Signaling();
/** The peer connection of the current session: our offer, the server's answer. */
const publisher = new Publisher(signaling, 'host');
let mic = null;
let video = null;
let failures = 0;

// Debug hooks for tests and the console.
window.marquee = {
  state,
  signaling,
  get pc() { return publisher.pc; },
  get videoTrack() { return video; },
  get audioTrack() { return mic; },
};

// ---- UI wiring -------------------------------------------------------------------

ui.name.value = localStorage.getItem('marquee.name') || ui.name.value;
ui.name.addEventListener('change', () => localStorage.setItem('marquee.name', ui.name.value.trim()));
ui.camera.addEventListener('click', () => chooseSource('camera'));
ui.screen.addEventListener('click', () => chooseSource('screen'));
ui.start.addEventListener('click', start);
ui.stop.addEventListener('click', stop);
ui.mute.addEventListener('click', () => {
  state.micMuted = !state.micMuted;
  if (mic) mic.enabled = !state.micMuted;
  render();
});
ui.copy.addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(ui.shareLink.value);
    ui.copy.textContent = 'Copied';
  } catch {
    // Clipboard needs a secure context; selecting lets the person copy by hand.
    ui.shareLink.select();
    ui.copy.textContent = 'Selected';
  }
  setTimeout(() => { ui.copy.textContent = 'Copy'; }, 1500);
});
if (state.room) showShare(state.room);
if (!navigator.mediaDevices) {
  showError('Camera and screen capture need a secure page: open it over HTTPS or on localhost.');
  ui.start.disabled = true;
}
render();

// ---- Signaling -------------------------------------------------------------------

signaling.addEventListener('statechange', (e) => {
  state.ws = e.detail.state;
  render();
});

signaling.addEventListener('open', () => {
  if (state.wantLive) sendJoin();
});

signaling.addEventListener('close', () => {
  // The server ended our session with the socket; a new one starts on reopen.
  closePc();
  state.live = false;
  state.media = null;
  render();
});

signaling.addEventListener('joined', (e) => {
  const msg = e.detail;
  state.joins++;
  state.room = msg.room;
  state.peerId = msg.peerId;
  if (msg.hostKey) sessionStorage.setItem(hostKeyItem(msg.room), msg.hostKey);
  // Keep the code in the address so a reload takes the same room back.
  const url = new URL(location.href);
  url.searchParams.set('room', msg.room);
  history.replaceState(null, '', url);
  showShare(msg.room);
  clearError();
  publish().catch((err) => fail(`Could not start publishing: ${err.message}`));
});

signaling.addEventListener('answer', (e) => publisher.handleAnswer(e.detail.sdp));

signaling.addEventListener('roomState', (e) => {
  state.live = e.detail.live;
  state.viewerCount = e.detail.viewerCount;
  render();
});

signaling.addEventListener('mediaState', (e) => {
  state.media = e.detail.state;
  if (state.media === 'connected') failures = 0;
  render();
});

signaling.addEventListener('error', (e) => {
  const { code, message } = e.detail;
  console.warn('[host] server error', code, message);
  if (FATAL_CODES.has(code)) {
    // Never retry these two: two tabs of the same host would keep evicting each other.
    const text = code === 'host_already_present'
      ? `Event ${state.room} already has a host (is it open in another tab?).`
      : code === 'session_replaced'
        ? 'You went live from another tab or device; this one stopped.'
        : `${message} (${code})`;
    stop();
    showError(text);
  } else if (code in RETRY_CODES) {
    showError(`${message} (${code}). Retrying…`);
    closePc();
    signaling.restart(RETRY_CODES[code]);
  } else {
    showError(`${message} (${code})`);
  }
});

function sendJoin() {
  const room = state.room;
  signaling.join({
    role: 'host',
    name: ui.name.value.trim(),
    room: room || undefined,
    hostKey: room ? sessionStorage.getItem(hostKeyItem(room)) || undefined : undefined,
  });
}

/** Room codes are case-insensitive (the server upper-cases them), so the key is too. */
function hostKeyItem(room) {
  return `marquee.hostKey.${room.toUpperCase()}`;
}

// ---- Going live --------------------------------------------------------------------

async function start() {
  clearError();
  ui.start.disabled = true;
  try {
    await ensureMedia();
  } catch (err) {
    ui.start.disabled = false;
    showError(`Could not open the ${state.source}: ${err.message}`);
    return;
  }
  state.wantLive = true;
  ui.start.disabled = false;
  if (signaling.state === 'open') sendJoin();
  else signaling.start();
  render();
}

function stop() {
  state.wantLive = false;
  signaling.leave();
  signaling.stop();
  closePc();
  stopMedia();
  state.live = false;
  state.media = null;
  state.viewerCount = 0;
  render();
}

async function publish() {
  await publisher.publish({ audio: mic, video });
  state.pc = publisher.state;
  render();
}

publisher.addEventListener('statechange', (e) => {
  state.pc = e.detail.state;
  if (state.pc === 'connected') failures = 0;
  render();
});
publisher.addEventListener('failed', (e) => {
  // An unusable answer is reported and left alone; a lost connection starts over.
  if (e.detail.kind === 'connection') restartSession(e.detail.reason);
  else fail(e.detail.reason);
});

/** Ends this session and starts a new one (re-join, re-offer), backing off on repeats. */
function restartSession(why) {
  if (!state.wantLive) return;
  const delay = Math.min(10_000, 1_000 * 2 ** failures++);
  state.error = `${why}; reconnecting in ${Math.round(delay / 1000)} s…`;
  closePc();
  signaling.restart(delay);
  render();
}

function closePc() {
  publisher.close();
  state.pc = 'new';
}

// ---- Local media -------------------------------------------------------------------

async function chooseSource(source) {
  if (source === state.source && video) return;
  clearError();
  let track;
  try {
    track = await openVideo(source);
  } catch (err) {
    // Cancelling the screen picker lands here: keep what we had.
    showError(`Could not open the ${source}: ${err.message}`);
    return;
  }
  state.source = source;
  await setVideoTrack(track);
  render();
}

async function ensureMedia() {
  if (!mic) {
    try {
      mic = (await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      })).getAudioTracks()[0];
      mic.enabled = !state.micMuted;
    } catch (err) {
      // Going live without sound beats not going live; the audio sender stays empty.
      console.warn('[host] no microphone:', err);
      showError(`No microphone (${err.message}); going live without sound.`);
    }
    if (mic) await publisher.replaceTrack('audio', mic);
  }
  if (!video) await setVideoTrack(await openVideo(state.source));
}

async function openVideo(source) {
  let track;
  if (source === 'screen') {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: false });
    track = stream.getVideoTracks()[0];
    track.contentHint = 'detail';
  } else {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
    });
    track = stream.getVideoTracks()[0];
    track.contentHint = 'motion';
  }
  return track;
}

async function setVideoTrack(track) {
  const old = video;
  video = track;
  // Same sender, new source: no renegotiation, viewers just see the new picture.
  await publisher.replaceTrack('video', track);
  if (old && old !== track) old.stop();
  if (track) {
    track.addEventListener('ended', () => {
      // The browser's "Stop sharing" button ends a screen track: fall back to the camera.
      if (video === track && state.source === 'screen') chooseSource('camera');
    });
  }
  ui.preview.srcObject = track ? new MediaStream([track]) : null;
  ui.preview.play().catch(() => {});
}

function stopMedia() {
  mic?.stop();
  video?.stop();
  mic = video = null;
  ui.preview.srcObject = null;
}

// ---- Stats line ----------------------------------------------------------------------

const STATS_INTERVAL_MS = 2_000;
let lastSent = null;
setInterval(async () => {
  const pc = publisher.pc;
  if (!pc || state.pc !== 'connected') {
    state.sending = '';
    lastSent = null;
    render();
    return;
  }
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type !== 'outbound-rtp' || s.kind !== 'video') continue;
    const rate = lastSent ? ` · ${Math.round(((s.bytesSent - lastSent.bytes) * 8) / (s.timestamp - lastSent.at))} kbps` : '';
    lastSent = { bytes: s.bytesSent, at: s.timestamp };
    const fps = s.framesPerSecond ? ` ${Math.round(s.framesPerSecond)} fps` : '';
    state.sending = s.frameWidth ? `Sending ${s.frameWidth}×${s.frameHeight}${fps}${rate}` : '';
  }
  render();
}, STATS_INTERVAL_MS);

// ---- Rendering -----------------------------------------------------------------------

function showShare(room) {
  ui.share.hidden = false;
  ui.roomCode.textContent = room;
  ui.shareLink.value = new URL(`watch.html?room=${encodeURIComponent(room)}`, location.href).href;
}

function showError(text) {
  state.error = text;
  render();
}

function clearError() {
  state.error = null;
  render();
}

function fail(text) {
  console.error('[host]', text);
  showError(text);
}

function render() {
  let conn = state.ws;
  let text = CONN_TEXT[state.ws];
  if (state.ws === 'open' && state.wantLive) {
    if (state.live && state.pc === 'connected') {
      conn = 'live';
      text = 'Live';
    } else {
      conn = 'connecting';
      text = 'Going live…';
    }
  }
  ui.conn.dataset.state = conn;
  ui.conn.textContent = text;

  ui.start.hidden = state.wantLive;
  ui.stop.hidden = !state.wantLive;
  ui.mute.disabled = !mic;
  ui.mute.setAttribute('aria-pressed', String(state.micMuted));
  ui.mute.textContent = state.micMuted ? 'Unmute mic' : 'Mute mic';
  ui.camera.setAttribute('aria-pressed', String(state.source === 'camera'));
  ui.screen.setAttribute('aria-pressed', String(state.source === 'screen'));
  ui.previewEmpty.hidden = Boolean(video);
  ui.liveBadge.hidden = !(state.wantLive && state.live);
  ui.viewerCount.textContent = String(state.viewerCount);
  ui.mediaState.textContent = state.media ?? (state.pc === 'new' ? '—' : state.pc);
  ui.error.hidden = !state.error;
  ui.error.textContent = state.error ?? '';
  ui.status.textContent = state.sending;
}
