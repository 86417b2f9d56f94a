// Watch-party page: party.html (create) and party.html?party=CODE (join).
//
// One WebSocket (js/signaling.js, reconnecting with backoff) carries the party protocol
// (protocol/src/wire.rs, protocol/src/model.rs): `partyJoin`, then the server sends the
// missed or recent events (`partyEvent`, in `seq` order) and a `partyState` snapshot, and
// from then on every event once and coalesced snapshots. The shared state (playback
// timeline, host, who controls) is applied only when its `version` is newer than ours.
//
// Resume: `{memberId, memberKey, lastSeq}` live in sessionStorage under the party code (per
// tab: two tabs are two members). After a dropped socket the page joins again with them and
// receives only the events after `lastSeq`; an event is rendered once (seq ≤ the last
// rendered one is ignored). A reload also restores the rendered chat from sessionStorage.
//
// Clock: js/clock.js (probe burst on join, then every 3 s). Playback: js/synced-video.js.
// Cameras (optional): js/party-cameras.js, through the live-room SFU.
import { Signaling } from './signaling.js';
import { initTv } from './tv.js';
import { ClockProber } from './clock.js';
import { SyncedVideo } from './synced-video.js';
import { PartyCameras } from './party-cameras.js';

initTv();

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'), partyLabel: $('party-label'), start: $('start'), party: $('party'),
  startName: $('start-name'), create: $('create'), joinForm: $('join-form'), joinCode: $('join-code'),
  startError: $('start-error'),
  banner: $('sync-banner'), video: $('video'), overlay: $('overlay'), reactionsLayer: $('reactions-layer'),
  play: $('play'), back: $('back'), forward: $('forward'), time: $('time'), rate: $('rate'),
  unmute: $('unmute'), fullscreen: $('fullscreen'), seek: $('seek'), syncLine: $('sync-line'),
  loadForm: $('load-form'), url: $('url'), load: $('load'),
  controlMode: $('control-mode'), controlEveryone: $('control-everyone'), controlHost: $('control-host'),
  controlNote: $('control-note'), cameras: $('cameras'), cameraButton: $('camera'),
  code: $('party-code'), qr: $('qr'), shareLink: $('share-link'), copy: $('copy'),
  members: $('members'), memberCount: $('member-count'), spread: $('spread'),
  chatLog: $('chat-log'), typing: $('typing'), chatForm: $('chat-form'), chatInput: $('chat-input'),
  meName: $('me-name'), toasts: $('toasts'), leave: $('leave'),
};

/** Interval of periodic sync reports (a status change is reported at once as well). */
const REPORT_INTERVAL_MS = 2_000;
/** Typing stops counting after this long without a keystroke. */
const TYPING_IDLE_MS = 3_000;
/** Rendered events kept in sessionStorage for a reload. */
const STORED_LOG = 200;
/** A playback command not acknowledged before a reconnect is resent only if this recent. */
const PLAYBACK_RESEND_MS = 5_000;
/** Keyboard steps on the seek bar are batched into one seek. */
const SEEK_DEBOUNCE_MS = 350;
/** Errors are shown this long. */
const TOAST_MS = 6_000;
/** Errors that say "this party is not there": stop and offer the join form. */
const FATAL_CODES = new Set(['party_not_found', 'unsupported_version']);
/** Errors answering a chat message or reaction (they carry no opId: the oldest pending one). */
const CHAT_ERRORS = new Set(['chat_too_long', 'invalid_reaction', 'rate_limited']);
/** Errors answering a playback or control command. */
const COMMAND_ERRORS = new Set([
  'permission_denied', 'stale_version', 'invalid_position', 'invalid_rate', 'invalid_url', 'nothing_loaded',
  'invalid_op_id',
]);
const CONN_TEXT = { idle: 'Offline', connecting: 'Connecting…', open: 'Connected', closed: 'Reconnecting…' };

const params = new URLSearchParams(location.search);
const state = {
  party: normalizeCode(params.get('party')),
  /** The person pressed "Create a party" (no code yet). */
  creating: false,
  memberId: null,
  memberKey: null,
  /** The last event seq rendered on this page. */
  lastSeq: 0,
  joined: false,
  /** Sessions joined (1 on a healthy page); resumed ones among them. */
  joins: 0,
  resumes: 0,
  /** Between partyJoined and the first partyState: events are history, not live. */
  replaying: false,
  shared: null,
  members: [],
  spread: null,
  syncAvailable: true,
  leadMs: null,
  limits: null,
  ws: 'idle',
  fatal: null,
};

const signaling = new Signaling();
const clock = new ClockProber({
  send: (t0) => signaling.timeProbe(t0),
  onSample: (c) => {
    if (c.sync.samples.length === 1) player.refresh();
  },
});
const player = new SyncedVideo(ui.video, clock);
/** Rendered events, newest last, as stored for a reload: {seq, kind, name, text, mine}. */
let log = [];
/** opId → {type, fields, kind: 'chat'|'command', at} awaiting an ack. */
const pending = new Map();
const opPrefix = randomId(6);
let opCounter = 0;
let typingSent = false;
let typingTimer = null;
let seekTimer = null;
let seekDragging = false;
const cameras = new PartyCameras({
  container: ui.cameras,
  onChange: (on) => {
    signaling.camera(on);
    renderCameraButton();
  },
  onError: (text) => toast(text),
});

window.marquee = {
  state, signaling, clock, player, cameras, pending,
  get log() { return log; },
};

// ---- Start: create or join --------------------------------------------------------

const savedName = localStorage.getItem('marquee.name') || '';
ui.startName.value = savedName;
if (state.party) {
  enterParty();
} else {
  ui.start.hidden = false;
  ui.startName.focus();
}

ui.create.addEventListener('click', () => {
  rememberName(ui.startName.value);
  state.creating = true;
  ui.create.disabled = true;
  enterParty();
});

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const code = normalizeCode(ui.joinCode.value);
  if (!code) {
    ui.joinCode.focus();
    return;
  }
  rememberName(ui.startName.value);
  const url = new URL(location.href);
  url.searchParams.set('party', code);
  location.href = url.href;
});

function enterParty() {
  ui.start.hidden = true;
  ui.party.hidden = false;
  if (state.party) {
    const saved = loadSaved(state.party);
    if (saved) {
      state.memberId = saved.memberId;
      state.memberKey = saved.memberKey;
      state.lastSeq = saved.lastSeq ?? 0;
      log = Array.isArray(saved.log) ? saved.log : [];
      for (const entry of log) appendLogEntry(entry);
    }
    showShare();
  }
  signaling.start();
  render();
}

/** The name typed once (any page), else a guest name kept for this tab (a reload keeps it). */
function myName() {
  const name = localStorage.getItem('marquee.name');
  if (name) return name;
  let guest = sessionStorage.getItem('marquee.guestName');
  if (!guest) {
    guest = `Guest ${randomId(3).toUpperCase()}`;
    sessionStorage.setItem('marquee.guestName', guest);
  }
  return guest;
}

function rememberName(name) {
  const trimmed = name.trim().slice(0, 64);
  if (trimmed) localStorage.setItem('marquee.name', trimmed);
}

// ---- Connection ----------------------------------------------------------------------

signaling.addEventListener('statechange', (e) => {
  state.ws = e.detail.state;
  render();
});

signaling.addEventListener('open', () => {
  clock.start();
  signaling.partyJoin({
    party: state.party || undefined,
    name: myName(),
    memberId: state.memberId,
    memberKey: state.memberKey,
    lastSeq: state.lastSeq,
  });
});

signaling.addEventListener('close', () => {
  clock.stop();
  state.joined = false;
  stopTyping(false);
  render();
});

signaling.addEventListener('timeReply', (e) => clock.handleReply(e.detail));

signaling.addEventListener('partyJoined', (e) => {
  const msg = e.detail;
  const hadMember = Boolean(state.memberId);
  state.joins++;
  if (msg.resumed) state.resumes++;
  state.joined = true;
  state.replaying = true;
  state.party = msg.party;
  state.creating = false;
  state.memberId = msg.memberId;
  state.memberKey = msg.memberKey;
  state.limits = msg.limits ?? null;
  if (state.limits?.maxChatChars) ui.chatInput.maxLength = state.limits.maxChatChars;
  if (!msg.historyComplete && state.lastSeq > 0) {
    // Events after our last one are no longer all kept: start the log afresh.
    log = [];
    ui.chatLog.replaceChildren();
    state.lastSeq = 0;
    addNote('Some messages from while you were away are no longer available.');
  } else if (hadMember && !msg.resumed) {
    addNote('You rejoined as a new member (the old session had expired).');
  }
  const url = new URL(location.href);
  url.searchParams.set('party', msg.party);
  history.replaceState(null, '', url);
  save();
  showShare();
  resendPending();
  sendReport();
  cameras.rejoin();
  render();
});

signaling.addEventListener('partyEvent', (e) => {
  const ev = e.detail;
  if (!Number.isFinite(ev.seq) || ev.seq <= state.lastSeq) return; // rendered already
  state.lastSeq = ev.seq;
  const body = ev.body ?? {};
  // History replays old states one after another; the partyState that ends the replay
  // carries the current one, so the player is not walked through each of them.
  if (body.kind === 'state' && body.state && !state.replaying) applyShared(body.state);
  if (ev.opId) {
    // Our own message: its optimistic copy gives way to the real one.
    pending.delete(ev.opId);
    ui.chatLog.querySelector(`[data-op-id="${CSS.escape(ev.opId)}"]`)?.remove();
  }
  const entry = describeEvent(ev);
  if (entry) {
    log.push(entry);
    if (log.length > STORED_LOG) log.splice(0, log.length - STORED_LOG);
    appendLogEntry(entry);
    if (body.kind === 'reaction' && !state.replaying) floatReaction(body.emoji);
  }
  save();
  render();
});

signaling.addEventListener('partyState', (e) => {
  const msg = e.detail;
  state.replaying = false;
  if (msg.state) applyShared(msg.state);
  state.members = Array.isArray(msg.members) ? msg.members : [];
  state.spread = msg.spread ?? null;
  state.leadMs = msg.leadMs ?? null;
  const wasAvailable = state.syncAvailable;
  state.syncAvailable = msg.syncAvailable !== false;
  if (!wasAvailable && state.syncAvailable) resendPending();
  cameras.setMembers(state.members, state.memberId, state.party);
  render();
});

signaling.addEventListener('ack', (e) => {
  const { opId } = e.detail;
  // The ack ends the retries; the event itself (same opId) replaces the optimistic copy.
  pending.delete(opId);
  const el = ui.chatLog.querySelector(`.pending[data-op-id="${CSS.escape(opId)}"]`);
  el?.classList.replace('pending', 'sent');
});

signaling.addEventListener('error', (e) => {
  const { code, message } = e.detail;
  console.warn('[party] server error', code, message);
  if (FATAL_CODES.has(code)) {
    if (state.party) sessionStorage.removeItem(storageKey(state.party));
    signaling.stop();
    clock.stop();
    cameras.stop();
    state.fatal = code === 'party_not_found'
      ? `There is no party with code ${state.party} (it may have ended).`
      : `${message} (${code})`;
    ui.party.hidden = true;
    ui.start.hidden = false;
    ui.startError.hidden = false;
    ui.startError.textContent = state.fatal;
    ui.create.disabled = false;
    ui.joinCode.value = state.party ?? '';
    render();
    return;
  }
  if (code === 'shutting_down') {
    signaling.restart(3_000);
  } else if (code === 'sync_unavailable') {
    state.syncAvailable = false; // pending ops are retried when it returns
  } else if (CHAT_ERRORS.has(code)) {
    failOldestPending('chat');
  } else if (COMMAND_ERRORS.has(code)) {
    failOldestPending('command');
  }
  if (code !== 'stale_version') toast(`${message} (${code})`);
  render();
});

/** Applies a shared state if it is newer than ours. */
function applyShared(shared) {
  if (state.shared && shared.version <= state.shared.version) return;
  state.shared = shared;
  player.setTimeline(shared.timeline);
}

// ---- Sending ---------------------------------------------------------------------------

function nextOpId() {
  opCounter++;
  return `${opPrefix}-${opCounter}`;
}

/** Sends an operation with a fresh opId and keeps it until acknowledged. */
function sendOp(type, fields, kind) {
  const opId = nextOpId();
  const op = { type, fields: { opId, ...fields }, kind, at: performance.now() };
  pending.set(opId, op);
  if (state.joined) signaling.send(type, op.fields);
  return opId;
}

/** After a reconnect or an outage: the same opIds again (the server applies each once). */
function resendPending() {
  if (!state.joined) return;
  const now = performance.now();
  for (const [opId, op] of pending) {
    if (op.kind === 'command' && now - op.at > PLAYBACK_RESEND_MS) {
      // Pressing play 20 s ago should not play now.
      pending.delete(opId);
      continue;
    }
    signaling.send(op.type, op.fields);
  }
}

function failOldestPending(kind) {
  for (const [opId, op] of pending) {
    if (op.kind !== kind) continue;
    pending.delete(opId);
    const el = ui.chatLog.querySelector(`[data-op-id="${CSS.escape(opId)}"]`);
    if (el) {
      el.classList.add('failed');
      el.title = 'Not sent';
    }
    return;
  }
}

function command(cmd, baseVersion) {
  const fields = { command: cmd };
  if (baseVersion != null) fields.baseVersion = baseVersion;
  sendOp('playback', fields, 'command');
}

function sendReport() {
  if (!state.joined) return;
  const report = player.report();
  if (state.shared) report.version = state.shared.version;
  if (clock.ready) {
    report.errorMs = clock.errorBound;
    report.rttMs = clock.rtt;
  }
  signaling.syncReport(report);
}
setInterval(sendReport, REPORT_INTERVAL_MS);
player.addEventListener('status', () => {
  sendReport();
  render();
});
player.addEventListener('mediaerror', (e) => toast(`Video: ${e.detail.message}`));
player.addEventListener('autoplayblocked', () => render());

// ---- Controls --------------------------------------------------------------------------

ui.play.addEventListener('click', () => {
  const s = state.shared;
  if (!s?.timeline.url) return;
  command({ action: s.timeline.paused ? 'play' : 'pause' }, s.version);
});
ui.back.addEventListener('click', () => seekBy(-10_000));
ui.forward.addEventListener('click', () => seekBy(10_000));
function seekBy(deltaMs) {
  const here = player.expectedMs() ?? ui.video.currentTime * 1000;
  const max = Number.isFinite(ui.video.duration) ? ui.video.duration * 1000 : Infinity;
  command({ action: 'seek', positionMs: Math.round(Math.min(max, Math.max(0, here + deltaMs))) });
}
ui.rate.addEventListener('change', () => command({ action: 'rate', rate: Number(ui.rate.value) }));
ui.loadForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const url = ui.url.value.trim();
  if (url) command({ action: 'load', url });
});
ui.seek.addEventListener('pointerdown', () => { seekDragging = true; });
ui.seek.addEventListener('pointerup', () => {
  if (seekTimer === null) seekDragging = false; // a click that changed nothing
});
ui.seek.addEventListener('input', () => {
  seekDragging = true;
  ui.time.textContent = timeText(Number(ui.seek.value));
});
ui.seek.addEventListener('change', () => {
  // Arrow keys fire one change per step: send the last one.
  seekDragging = true;
  clearTimeout(seekTimer);
  seekTimer = setTimeout(() => {
    command({ action: 'seek', positionMs: Number(ui.seek.value) });
    // Keep showing the chosen position until the change comes back.
    seekTimer = setTimeout(() => {
      seekTimer = null;
      seekDragging = false;
    }, SEEK_DEBOUNCE_MS);
  }, SEEK_DEBOUNCE_MS);
});
ui.controlEveryone.addEventListener('click', () => sendOp('setControl', { control: 'everyone' }, 'command'));
ui.controlHost.addEventListener('click', () => sendOp('setControl', { control: 'host' }, 'command'));

ui.unmute.addEventListener('click', () => {
  ui.video.muted = !ui.video.muted;
  if (!ui.video.muted) ui.video.volume = 1;
  render();
});
ui.video.addEventListener('volumechange', render);
ui.fullscreen.addEventListener('click', () => {
  const stage = document.querySelector('.page-party .stage');
  if (document.fullscreenElement) document.exitFullscreen();
  else (stage.requestFullscreen?.() ?? ui.video.webkitEnterFullscreen?.());
});
ui.copy.addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(ui.shareLink.value);
    ui.copy.textContent = 'Copied';
  } catch {
    ui.shareLink.select(); // clipboard needs a secure context
    ui.copy.textContent = 'Selected';
  }
  setTimeout(() => { ui.copy.textContent = 'Copy'; }, 1500);
});
ui.cameraButton.addEventListener('click', async () => {
  if (!state.joined) return;
  ui.cameraButton.disabled = true;
  await cameras.toggle({ party: state.party, memberId: state.memberId, name: myName() });
  render();
});

ui.leave.addEventListener('click', () => {
  // Leaving on purpose: the server hands the host role on at once and forgets us.
  signaling.leave();
  if (state.party) sessionStorage.removeItem(storageKey(state.party));
  cameras.stop();
  clock.stop();
  signaling.stop();
  location.href = 'party.html';
});

// ---- Chat, reactions, typing --------------------------------------------------------------

ui.chatForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.chatInput.value.trim();
  if (!text) return;
  const max = state.limits?.maxChatChars ?? 500;
  if ([...text].length > max) {
    toast(`A message is at most ${max} characters.`);
    return;
  }
  const opId = sendOp('chat', { text }, 'chat');
  appendLogEntry({ seq: null, kind: 'chat', name: myName(), text, mine: true, opId });
  ui.chatInput.value = '';
  stopTyping(true);
});
ui.chatInput.addEventListener('input', () => {
  if (!ui.chatInput.value) {
    stopTyping(true);
    return;
  }
  if (!typingSent && state.joined) {
    typingSent = signaling.typing(true);
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => stopTyping(true), TYPING_IDLE_MS);
});
ui.chatInput.addEventListener('blur', () => stopTyping(true));
for (const button of document.querySelectorAll('[data-emoji]')) {
  button.addEventListener('click', () => sendOp('react', { emoji: button.dataset.emoji }, 'chat'));
}

function stopTyping(send) {
  clearTimeout(typingTimer);
  typingTimer = null;
  if (typingSent && send) signaling.typing(false);
  typingSent = false;
}

/** A log entry for an event, or null for one not shown. */
function describeEvent(ev) {
  const body = ev.body ?? {};
  const mine = ev.from === state.memberId;
  const name = ev.name || memberName(ev.from) || 'Someone';
  switch (body.kind) {
    case 'chat':
      return { seq: ev.seq, kind: 'chat', name, text: body.text, mine };
    case 'reaction':
      return { seq: ev.seq, kind: 'reaction', name, text: body.emoji, mine };
    case 'state':
      return { seq: ev.seq, kind: 'activity', name: '', text: describeChange(body, name), mine };
    default:
      return null;
  }
}

function describeChange({ cause, state: s }, name) {
  const tl = s?.timeline ?? {};
  switch (cause) {
    case 'load': return `${name} loaded ${tl.url ?? 'a video'}`;
    case 'play': return `${name} pressed play at ${timeText(tl.positionMs)}`;
    case 'pause': return `${name} paused at ${timeText(tl.positionMs)}`;
    case 'seek': return `${name} jumped to ${timeText(tl.positionMs)}`;
    case 'rate': return `${name} set the speed to ${tl.rate}×`;
    case 'control': return s?.control === 'host' ? `${name} took control of playback` : `${name} let everyone control playback`;
    case 'handOff': return `${memberName(s?.host) ?? 'Someone'} is now the host`;
    case 'wait': return `Paused at ${timeText(tl.positionMs)}: waiting for someone to catch up`;
    case 'resume': return 'Resumed';
    default: return `Playback changed (${cause})`;
  }
}

function appendLogEntry(entry) {
  const li = document.createElement('li');
  li.className = `msg msg-${entry.kind}${entry.mine ? ' mine' : ''}`;
  if (entry.seq != null) li.dataset.seq = String(entry.seq);
  if (entry.opId) {
    li.dataset.opId = entry.opId;
    li.classList.add('pending');
  }
  if (entry.kind === 'activity') {
    li.textContent = entry.text;
  } else {
    const who = document.createElement('strong');
    who.textContent = entry.name;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = ` ${entry.text}`;
    li.append(who, text);
  }
  const atBottom = ui.chatLog.scrollHeight - ui.chatLog.scrollTop - ui.chatLog.clientHeight < 40;
  // Own messages still in flight stay last.
  const firstOwn = entry.opId ? null : ui.chatLog.querySelector('[data-op-id]');
  ui.chatLog.insertBefore(li, firstOwn);
  if (atBottom || entry.mine) ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function addNote(text) {
  const li = document.createElement('li');
  li.className = 'msg msg-activity note';
  li.textContent = text;
  ui.chatLog.append(li);
}

function floatReaction(emoji) {
  const span = document.createElement('span');
  span.className = 'floating-reaction';
  span.textContent = emoji;
  span.style.left = `${10 + Math.random() * 80}%`;
  ui.reactionsLayer.append(span);
  setTimeout(() => span.remove(), 2_500);
}

function memberName(id) {
  return state.members.find((m) => m.memberId === id)?.name ?? null;
}

// ---- Storage -------------------------------------------------------------------------------

function storageKey(code) {
  return `marquee.party.${code}`;
}

function loadSaved(code) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(storageKey(code)) ?? 'null');
    return saved && typeof saved.memberId === 'string' ? saved : null;
  } catch {
    return null;
  }
}

function save() {
  if (!state.party || !state.memberId) return;
  try {
    sessionStorage.setItem(storageKey(state.party), JSON.stringify({
      memberId: state.memberId, memberKey: state.memberKey, lastSeq: state.lastSeq, log,
    }));
  } catch (err) {
    console.warn('[party] cannot save the session', err); // quota: resume still works in memory
  }
}

// ---- Rendering -------------------------------------------------------------------------------

function showShare() {
  if (!state.party) return;
  document.title = `${state.party} · Watch party · Marquee`;
  ui.partyLabel.textContent = `Party ${state.party}`;
  ui.code.textContent = state.party;
  const link = new URL(`party.html?party=${encodeURIComponent(state.party)}`, location.href).href;
  if (ui.shareLink.value !== link) {
    ui.shareLink.value = link;
    ui.qr.src = `/qr.svg?text=${encodeURIComponent(link)}`;
  }
}

function canControl() {
  const s = state.shared;
  if (!s || !state.joined) return false;
  return s.control !== 'host' || s.host === state.memberId;
}

function render() {
  let conn = state.ws;
  let text = CONN_TEXT[state.ws];
  if (state.ws === 'open' && !state.joined) text = 'Joining…';
  if (state.fatal) {
    conn = 'error';
    text = 'Stopped';
  }
  ui.conn.dataset.state = conn;
  ui.conn.textContent = text;
  ui.meName.textContent = myName();

  const s = state.shared;
  const tl = s?.timeline;
  const allowed = canControl();
  const loaded = Boolean(tl?.url);
  ui.play.disabled = !allowed || !loaded;
  ui.play.textContent = tl && !tl.paused ? 'Pause' : 'Play';
  ui.back.disabled = ui.forward.disabled = ui.seek.disabled = ui.rate.disabled = !allowed || !loaded;
  ui.load.disabled = !allowed;
  ui.url.disabled = !allowed;
  if (tl && document.activeElement !== ui.rate) ui.rate.value = String(tl.rate);
  const isHost = Boolean(s && s.host === state.memberId);
  ui.controlMode.hidden = !isHost;
  ui.controlEveryone.setAttribute('aria-pressed', String(s?.control !== 'host'));
  ui.controlHost.setAttribute('aria-pressed', String(s?.control === 'host'));
  ui.controlNote.hidden = !s || allowed || !state.joined;

  let overlay = null;
  if (state.ws !== 'open') overlay = state.ws === 'closed' ? 'Connection lost. Reconnecting…' : 'Connecting…';
  else if (!state.joined) overlay = 'Joining the party…';
  else if (!loaded) overlay = allowed ? 'Load a video to start watching together.' : 'Waiting for the host to load a video…';
  else if (player.status === 'buffering') overlay = 'Loading…';
  ui.overlay.hidden = overlay === null;
  ui.overlay.textContent = overlay ?? '';
  ui.banner.hidden = state.syncAvailable || !state.joined;
  ui.unmute.textContent = ui.video.muted ? 'Unmute' : 'Mute';
  ui.unmute.setAttribute('aria-pressed', String(!ui.video.muted));

  renderMembers();
  renderCameraButton();
}

function renderMembers() {
  const online = state.members.filter((m) => m.online !== false);
  ui.memberCount.textContent = state.members.length ? `(${online.length})` : '';
  const items = state.members.map((m) => {
    const li = document.createElement('li');
    li.className = 'member';
    li.dataset.memberId = m.memberId;
    li.dataset.online = String(m.online !== false);
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.title = m.online !== false ? 'online' : 'offline';
    const name = document.createElement('span');
    name.className = 'member-name';
    name.textContent = m.name || 'Guest';
    li.append(dot, name);
    if (m.memberId === state.memberId) li.append(tag('you', 'tag'));
    if (m.host) li.append(tag('host', 'tag host'));
    if (m.camera) li.append(tag('cam', 'tag'));
    const facts = document.createElement('span');
    facts.className = 'member-facts muted';
    const parts = [m.online === false ? 'offline' : m.status];
    if (Number.isFinite(m.deviationMs)) parts.push(`${m.deviationMs >= 0 ? '+' : '−'}${Math.abs(m.deviationMs).toFixed(0)} ms`);
    if (Number.isFinite(m.rttMs)) parts.push(`rtt ${m.rttMs.toFixed(0)} ms`);
    if (m.typing && m.memberId !== state.memberId) parts.push('typing…');
    facts.textContent = parts.join(' · ');
    facts.dataset.status = m.status;
    li.append(facts);
    return li;
  });
  ui.members.replaceChildren(...items);

  const sp = state.spread;
  ui.spread.textContent = sp && sp.samples > 0
    ? `Sync spread p50 ${sp.p50Ms.toFixed(0)} ms · p95 ${sp.p95Ms.toFixed(0)} ms · max ${sp.maxMs.toFixed(0)} ms (${sp.samples} samples)`
    : 'Sync spread: waiting for reports';

  const typers = state.members.filter((m) => m.typing && m.memberId !== state.memberId && m.online !== false);
  ui.typing.textContent = typers.length === 0 ? ''
    : typers.length === 1 ? `${typers[0].name} is typing…` : `${typers.map((m) => m.name).join(', ')} are typing…`;
}

function renderCameraButton() {
  ui.cameraButton.disabled = !state.joined || !navigator.mediaDevices;
  ui.cameraButton.setAttribute('aria-pressed', String(cameras.on));
  ui.cameraButton.textContent = cameras.on ? 'Camera on' : 'Camera off';
  ui.cameras.hidden = !cameras.hasTiles();
}

function tag(text, className) {
  const span = document.createElement('span');
  span.className = className;
  span.textContent = text;
  return span;
}

/** The seek bar, clock and drift line move continuously. */
setInterval(() => {
  const v = ui.video;
  const durationMs = Number.isFinite(v.duration) ? v.duration * 1000 : 0;
  ui.seek.max = String(Math.round(durationMs));
  if (!seekDragging) ui.seek.value = String(Math.round(v.currentTime * 1000));
  if (!seekDragging) ui.time.textContent = `${timeText(v.currentTime * 1000)} / ${timeText(durationMs)}`;
  const parts = [];
  if (clock.ready) parts.push(`clock ±${clock.errorBound.toFixed(1)} ms (rtt ${clock.rtt.toFixed(1)} ms)`);
  if (player.last.errorMs !== null && state.shared?.timeline.url) {
    parts.push(`you ${player.last.errorMs >= 0 ? '+' : '−'}${Math.abs(player.last.errorMs).toFixed(0)} ms`);
    if (ui.video.playbackRate !== (state.shared.timeline.rate ?? 1)) parts.push(`rate ${ui.video.playbackRate.toFixed(3)}×`);
  }
  ui.syncLine.textContent = parts.join(' · ');
}, 250);

function timeText(ms) {
  if (!Number.isFinite(ms) || ms < 0) ms = 0;
  const total = Math.floor(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

function toast(text) {
  const p = document.createElement('p');
  p.className = 'toast';
  p.textContent = text;
  ui.toasts.append(p);
  while (ui.toasts.children.length > 3) ui.toasts.firstElementChild.remove();
  setTimeout(() => p.remove(), TOAST_MS);
}

function normalizeCode(code) {
  return code?.replace(/\s+/g, '').toUpperCase() || null;
}

/** Random [a-z0-9] characters; crypto.getRandomValues works on plain HTTP too. */
function randomId(bytes) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => (b % 36).toString(36)).join('');
}

render();
