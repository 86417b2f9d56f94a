// WHEP player: whep.html?room=CODE[&token=JWT][&relay=1][&endpoint=URL]
//
// Plays a live event over WHEP (WebRTC-HTTP Egress Protocol, the playback twin of WHIP,
// RFC 9725): plain HTTP, no WebSocket, so any WHEP server can feed it. `endpoint` overrides
// the default `/whep/CODE` on this host.
//
// One session:
//  1. `OPTIONS` on the endpoint: its `Link: <turn:…>; rel="ice-server"` headers are the STUN
//     and TURN servers to use (RFC 9725 §4.6), fetched before the peer connection exists so
//     that the relay can be part of the offer.
//  2. A peer connection receiving one audio and one video track (recvonly transceivers), its
//     offer, and ICE gathering until complete or `GATHER_MAX_MS`: the offer carries our
//     candidates, so the server needs no trickle; any candidate found later is sent with
//     `PATCH` (application/trickle-ice-sdpfrag).
//  3. `POST` of the offer (`Authorization: Bearer` when the page has `?token=`). `201`: the
//     answer, the session's `Location` (for PATCH and DELETE) and `ETag`. `404` (the server
//     says `room_not_live` or `room_not_found`): the host is not live yet; the same offer is
//     posted again every `NOT_LIVE_RETRY_MS`. 401/403 and other client errors stop with the
//     error shown; 429, 5xx and network errors are retried with backoff.
//  4. Playing. A peer connection that fails, stays disconnected for `DISCONNECTED_GRACE_MS`,
//     or receives no RTP for `MEDIA_STALL_MS` after the answer (ICE never connected, or the
//     host stopped) ends the session (DELETE) and starts a new one, with fresh TURN
//     credentials, after a backoff.
// Leaving the page (`pagehide`) deletes the session so the server frees it at once.
//
// Debug hooks (tests, console): `window.marquee.state`, `.pc`, `.stream`.
import { pageToken } from './signaling.js';
import { createPeerConnection, DISCONNECTED_GRACE_MS, relayOnly } from './rtc.js';
import { readInbound, wirePlayerControls } from './player.js';
import { initTv } from './tv.js';

/** Longest wait for ICE gathering before the offer goes out anyway. */
const GATHER_MAX_MS = 2_000;
/** How often to ask again while the room has nothing live (`404 room_not_live`). */
const NOT_LIVE_RETRY_MS = 2_000;
/**
 * 404 codes that mean "the host has not started": the room exists without live tracks, or
 * does not exist yet (a room is created when its host first publishes).
 */
const WAITING_CODES = new Set(['room_not_live', 'room_not_found', 'http_404']);
/** Backoff after a failed session or a server/network error: first delay, cap. */
const RETRY_START_MS = 1_000;
const RETRY_MAX_MS = 15_000;
/** An HTTP request that takes longer than this counts as a network error. */
const REQUEST_TIMEOUT_MS = 10_000;
/** Connected but no RTP at all for this long: the stream is gone, start a new session. */
const MEDIA_STALL_MS = 10_000;
const STATS_INTERVAL_MS = 2_000;

/**
 * The ICE servers in a `Link` header value (several headers arrive joined by ", "):
 * `<turn:host:3478?transport=udp>; rel="ice-server"; username="u"; credential="p";
 * credential-type="password"` becomes `{urls: ['turn:…'], username: 'u', credential: 'p'}`.
 * Links with another `rel` or a non-STUN/TURN URL are skipped.
 */
export function parseIceServerLinks(header) {
  const servers = [];
  if (!header) return servers;
  for (const link of splitOutsideQuotes(header, ',')) {
    const m = /^\s*<([^>]*)>(.*)$/s.exec(link);
    if (!m) continue;
    const url = m[1].trim();
    const params = {};
    for (const part of splitOutsideQuotes(m[2], ';')) {
      const eq = part.indexOf('=');
      if (eq < 0) continue;
      const key = part.slice(0, eq).trim().toLowerCase();
      let value = part.slice(eq + 1).trim();
      if (value.startsWith('"')) value = value.slice(1, value.endsWith('"') ? -1 : undefined).replace(/\\(.)/g, '$1');
      if (key && !(key in params)) params[key] = value;
    }
    if (!(params.rel ?? '').toLowerCase().split(/\s+/).includes('ice-server')) continue;
    if (!/^(stuns?|turns?):/i.test(url)) continue;
    const server = { urls: [url] };
    if (params.username !== undefined) server.username = params.username;
    if (params.credential !== undefined) server.credential = params.credential;
    servers.push(server);
  }
  return servers;
}

/** Splits on `sep` where it is neither inside "quotes" (with \ escapes) nor inside <…>. */
function splitOutsideQuotes(text, sep) {
  const parts = [];
  let current = '';
  let quoted = false;
  let angle = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted && c === '\\' && i + 1 < text.length) {
      current += c + text[++i];
      continue;
    }
    if (c === '"' && !angle) quoted = !quoted;
    else if (c === '<' && !quoted) angle = true;
    else if (c === '>' && !quoted) angle = false;
    else if (c === sep && !quoted && !angle) {
      parts.push(current);
      current = '';
      continue;
    }
    current += c;
  }
  parts.push(current);
  return parts;
}

/** Candidates of a local description as an SDP fragment for PATCH (RFC 8840). */
function trickleFragment(description, candidates, done) {
  const sdp = description.sdp;
  const ufrag = /^a=ice-ufrag:(.*)$/m.exec(sdp)?.[1]?.trim();
  const pwd = /^a=ice-pwd:(.*)$/m.exec(sdp)?.[1]?.trim();
  const lines = [];
  if (ufrag) lines.push(`a=ice-ufrag:${ufrag}`);
  if (pwd) lines.push(`a=ice-pwd:${pwd}`);
  // With BUNDLE every candidate belongs to the first m-line; name it by its mid.
  const mid = /^a=mid:(.*)$/m.exec(sdp)?.[1]?.trim() ?? '0';
  const kind = /^m=(\w+)/m.exec(sdp)?.[1] ?? 'audio';
  lines.push(`m=${kind} 9 UDP/TLS/RTP/SAVPF 0`, `a=mid:${mid}`);
  for (const c of candidates) lines.push(`a=${c.candidate}`);
  if (done) lines.push('a=end-of-candidates');
  return `${lines.join('\r\n')}\r\n`;
}

// ---- Page -------------------------------------------------------------------------------

if (typeof document !== 'undefined' && document.body?.classList.contains('page-whep')) main();

function main() {
  initTv();
  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn'), roomLabel: $('room-label'), video: $('video'), overlay: $('overlay'),
    liveBadge: $('live-badge'), unmute: $('unmute'), fullscreen: $('fullscreen'),
    stats: $('stats'), error: $('error'), codeForm: $('code-form'),
  };

  const params = new URLSearchParams(location.search);
  const room = params.get('room')?.replace(/\s+/g, '') || '';
  const endpoint = params.get('endpoint')
    ? new URL(params.get('endpoint'), location.href).href
    : room ? new URL(`/whep/${encodeURIComponent(room)}`, location.href).href : null;
  const token = pageToken();
  const relay = relayOnly();

  const state = {
    room,
    endpoint,
    relay,
    /**
     * 'idle' | 'preparing' (OPTIONS, offer, gathering) | 'requesting' (POST) | 'waiting'
     * (nothing live yet) | 'connecting' (answered, ICE/DTLS) | 'playing' | 'retrying' |
     * 'stopped' (fatal error: reload to try again)
     */
    phase: 'idle',
    /** Human text of the current condition; null shows the phase's default. */
    notice: null,
    /** The last error, e.g. "Not allowed (403 forbidden)". */
    error: null,
    /** `code` of the last error response (JSON body `code`, else `http_<status>`). */
    errorCode: null,
    pc: 'new',
    playing: false,
    iceServers: [],
    /** The session on the server: absolute URL from `Location`, and its `ETag`. */
    resource: null,
    etag: null,
    /** Sessions created (201) and POSTs answered 404 while waiting. */
    sessions: 0,
    notLive: 0,
    /** The code of the last 404 (`room_not_live`, `room_not_found`, …). */
    notLiveCode: null,
    stalls: 0,
  };

  let pc = null;
  let stream = null;
  /** Bumped on every new session: stale async steps of an older one see it and stop. */
  let generation = 0;
  let failures = 0;
  let retryTimer = null;
  let disconnectTimer = null;

  window.marquee = {
    state,
    get pc() { return pc; },
    get stream() { return stream; },
    parseIceServerLinks,
  };

  if (!endpoint) {
    // No code: ask for one, keeping the other parameters (token, relay, tv) in the form.
    document.querySelector('.stage').hidden = true;
    document.querySelector('.controls').hidden = true;
    ui.codeForm.hidden = false;
    for (const [key, value] of params) {
      if (key === 'room') continue;
      const input = document.createElement('input');
      input.type = 'hidden';
      input.name = key;
      input.value = value;
      ui.codeForm.append(input);
    }
    ui.codeForm.querySelector('#room-input').focus();
    render();
    return;
  }

  document.title = `${room || 'WHEP'} · Marquee`;
  ui.roomLabel.textContent = room ? `Event ${room}${relay ? ' · relay only' : ''}` : endpoint;

  wirePlayerControls(ui, () => { state.playing = true; }, render);

  // Leaving: free the server's session now rather than after its ICE timeout. A page
  // restored from the back/forward cache starts over.
  addEventListener('pagehide', () => {
    generation++;
    endSession({ keepalive: true });
  });
  addEventListener('pageshow', (e) => { if (e.persisted) startSession(); });

  startSession();
  setInterval(watchStats, STATS_INTERVAL_MS);

  // ---- Session -------------------------------------------------------------------------

  async function startSession() {
    endSession();
    const gen = ++generation;
    state.phase = 'preparing';
    state.notice = null;
    render();

    state.iceServers = await fetchIceServers();
    if (gen !== generation) return;

    pc = createPeerConnection({ iceServers: state.iceServers, iceTransportPolicy: relay ? 'relay' : 'all' });
    const mine = pc;
    const late = [];
    let posted = false;
    mine.addTransceiver('audio', { direction: 'recvonly' });
    mine.addTransceiver('video', { direction: 'recvonly' });
    mine.ontrack = (e) => {
      if (mine !== pc) return;
      // One stream for the <video>: the newest track of each kind.
      const tracks = (stream?.getTracks() ?? []).filter((t) => t.kind !== e.track.kind);
      stream = new MediaStream([...tracks, e.track]);
      ui.video.srcObject = stream;
      ui.video.play().catch((err) => console.warn('[whep] play() refused:', err.message));
      render();
    };
    mine.onconnectionstatechange = () => mine === pc && onConnectionState(mine.connectionState);
    mine.onicecandidate = (e) => {
      if (mine !== pc || !posted) return;
      late.push(e.candidate); // null = gathering complete
      trickle(mine, late);
    };

    try {
      await mine.setLocalDescription(await mine.createOffer());
      await gatheringDone(mine, GATHER_MAX_MS);
    } catch (err) {
      if (gen !== generation) return;
      fatal(`This browser could not prepare the stream: ${err.message}`, 'offer_failed');
      return;
    }
    if (gen !== generation) return;
    if (mine.iceGatheringState !== 'complete') console.info('[whep] posting before gathering completed; the rest trickles');
    // The description now holds every candidate gathered so far.
    const offer = mine.localDescription.sdp;

    for (;;) {
      state.phase = 'requesting';
      render();
      const result = await post(offer);
      if (gen !== generation) return;
      if (result.kind === 'answer') {
        try {
          await mine.setRemoteDescription({ type: 'answer', sdp: result.sdp });
        } catch (err) {
          if (gen !== generation) return;
          state.error = `The server's answer was not usable: ${err.message}`;
          state.errorCode = 'bad_answer';
          retrySession('The stream could not start');
          return;
        }
        if (gen !== generation) return;
        posted = true;
        if (mine.iceGatheringState !== 'complete') trickle(mine, late);
        state.phase = 'connecting';
        state.error = null;
        state.errorCode = null;
        render();
        return;
      }
      if (result.kind === 'not_live') {
        state.notLive++;
        state.phase = 'waiting';
        state.notLiveCode = result.code;
        state.notice = WAITING_CODES.has(result.code)
          ? `Waiting for the host to go live… (checking every ${NOT_LIVE_RETRY_MS / 1000} s)`
          : `Nothing to play yet: ${result.message} (${result.code}). Checking again every ${NOT_LIVE_RETRY_MS / 1000} s…`;
        render();
        await delay(NOT_LIVE_RETRY_MS);
        if (gen !== generation) return;
        continue;
      }
      if (result.kind === 'fatal') {
        fatal(result.message, result.code);
        return;
      }
      // 'retry': the server or the network failed us; back off and start over.
      state.error = result.message;
      state.errorCode = result.code;
      retrySession('The server did not answer', result.retryAfterMs);
      return;
    }
  }

  /** OPTIONS → Link ice-server headers; any failure means "no ICE servers", not an error. */
  async function fetchIceServers() {
    try {
      const res = await fetch(endpoint, { method: 'OPTIONS', headers: authHeaders(), signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      await res.arrayBuffer().catch(() => {}); // read to the end: the connection is reused
      const servers = parseIceServerLinks(res.headers.get('link'));
      console.info(`[whep] OPTIONS ${res.status}: ${servers.length} ICE server(s)`, servers.map((s) => s.urls.join(' ')));
      return servers;
    } catch (err) {
      console.info('[whep] OPTIONS failed, no ICE servers:', err.message);
      return [];
    }
  }

  /**
   * POSTs the offer. Resolves to {kind: 'answer', sdp} | {kind: 'not_live', code, message} |
   * {kind: 'fatal', code, message} | {kind: 'retry', code, message, retryAfterMs}.
   */
  async function post(offer) {
    let res;
    try {
      res = await fetch(endpoint, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
        body: offer,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      return { kind: 'retry', code: 'network_error', message: `Cannot reach the server (${err.message})` };
    }
    if (res.status === 201) {
      const sdp = await res.text().catch(() => '');
      const location = res.headers.get('location');
      state.resource = location ? new URL(location, res.url || endpoint).href : null;
      state.etag = res.headers.get('etag');
      state.sessions++;
      // TURN servers may also come with the answer; they serve the next ICE restart.
      const linked = parseIceServerLinks(res.headers.get('link'));
      if (linked.length && state.iceServers.length === 0) state.iceServers = linked;
      if (!state.resource) console.warn('[whep] 201 without Location: the session cannot be ended or patched');
      return { kind: 'answer', sdp };
    }
    const { code, message } = await errorOf(res);
    const retryAfterMs = Number(res.headers.get('retry-after')) * 1000 || undefined;
    if (res.status === 404) return { kind: 'not_live', code, message };
    if (res.status === 401 || res.status === 403) {
      return { kind: 'fatal', code, message: `Not allowed to watch: ${message} (${res.status} ${code})` };
    }
    if (res.status === 429 || res.status === 503 || res.status >= 500) {
      return { kind: 'retry', code, message: `${message} (${res.status} ${code})`, retryAfterMs };
    }
    return { kind: 'fatal', code, message: `The server refused the stream: ${message} (${res.status} ${code})` };
  }

  /** Sends candidates found after the POST; `null` in `late` marks the end of gathering. */
  async function trickle(mine, late) {
    if (!state.resource || late.length === 0) return;
    const batch = late.splice(0);
    const done = batch.includes(null);
    const candidates = batch.filter((c) => c && c.candidate);
    if (candidates.length === 0 && !done) return;
    try {
      const headers = { 'Content-Type': 'application/trickle-ice-sdpfrag', ...authHeaders() };
      if (state.etag) headers['If-Match'] = state.etag;
      const res = await fetch(state.resource, {
        method: 'PATCH', headers, body: trickleFragment(mine.localDescription, candidates, done),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      if (!res.ok) console.info(`[whep] trickle PATCH answered ${res.status} (fine for a server that needs no candidates)`);
    } catch (err) {
      console.info('[whep] trickle PATCH failed:', err.message);
    }
  }

  function onConnectionState(s) {
    state.pc = s;
    clearTimeout(disconnectTimer);
    if (s === 'connected') {
      failures = 0;
      state.notice = null;
    } else if (s === 'failed' || s === 'closed') {
      retrySession('The media connection failed');
    } else if (s === 'disconnected') {
      disconnectTimer = setTimeout(() => retrySession('The media connection was lost'), DISCONNECTED_GRACE_MS);
    }
    render();
  }

  /** Ends this session and starts a new one after a backoff (or the server's Retry-After). */
  function retrySession(why, afterMs) {
    const wait = afterMs ?? Math.min(RETRY_MAX_MS, RETRY_START_MS * 2 ** failures++);
    console.warn(`[whep] ${why}; new session in ${wait} ms`, state.error ?? '');
    endSession();
    generation++;
    state.phase = 'retrying';
    state.notice = `${why}. Trying again in ${Math.ceil(wait / 1000)} s…`;
    render();
    retryTimer = setTimeout(startSession, wait);
  }

  function fatal(message, code) {
    endSession();
    generation++;
    state.phase = 'stopped';
    state.error = message;
    state.errorCode = code;
    state.notice = code === 'unauthorized' || code === 'forbidden' || /^Not allowed/.test(message)
      ? 'This stream needs a valid access link.'
      : 'The stream could not be played.';
    render();
  }

  /** Closes the peer connection and DELETEs the server's session (best effort). */
  function endSession({ keepalive = false } = {}) {
    clearTimeout(retryTimer);
    clearTimeout(disconnectTimer);
    retryTimer = null;
    if (pc) {
      pc.ontrack = pc.onconnectionstatechange = pc.onicecandidate = null;
      pc.close();
      pc = null;
    }
    if (state.resource) {
      fetch(state.resource, { method: 'DELETE', headers: authHeaders(), keepalive }).catch(() => {});
      state.resource = null;
      state.etag = null;
    }
    stream = null;
    ui.video.srcObject = null;
    state.pc = 'new';
    state.playing = false;
  }

  function authHeaders() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // ---- Stats line and stall watchdog -----------------------------------------------------

  let lastBytes = null;
  let lastPackets = { count: -1, at: 0 };
  async function watchStats() {
    const mine = pc;
    if (!mine) {
      ui.stats.textContent = '';
      lastBytes = null;
      lastPackets = { count: -1, at: 0 };
      return;
    }
    const stats = await mine.getStats();
    if (mine !== pc) return;
    const { packets, relayed, line, video } = readInbound(stats, lastBytes);
    lastBytes = video;
    if (line !== null) ui.stats.textContent = line;
    if (relayed && ui.stats.textContent) ui.stats.textContent += ' · via relay';
    // Counted from the answer on, whatever the connection state says: ICE that never
    // connects, a server that stopped sending, and a remote DTLS close (after which Chrome
    // reports the state `new`) all end up here.
    const now = performance.now();
    if (state.phase !== 'connecting' || packets !== lastPackets.count) {
      lastPackets = { count: packets, at: now };
    } else if (now - lastPackets.at > MEDIA_STALL_MS) {
      state.stalls++;
      retrySession('The stream stopped');
    }
  }

  // ---- Rendering -----------------------------------------------------------------------

  function render() {
    const hasVideo = state.playing && ui.video.videoWidth > 0;
    const live = state.pc === 'connected' && hasVideo;
    let conn = 'connecting';
    let text = 'Connecting…';
    if (live) {
      conn = 'live';
      text = 'Live';
    } else if (state.phase === 'stopped') {
      conn = 'error';
      text = 'Stopped';
    } else if (state.phase === 'waiting') {
      conn = 'open';
      text = 'Waiting';
    } else if (state.phase === 'retrying') {
      conn = 'closed';
      text = 'Reconnecting…';
    } else if (state.phase === 'idle') {
      conn = 'idle';
      text = 'Offline';
    }
    ui.conn.dataset.state = conn;
    ui.conn.textContent = text;

    let overlay = null;
    if (state.notice) overlay = state.notice;
    else if (!live) overlay = state.phase === 'connecting' ? 'Connecting to the stream…' : 'Connecting…';
    ui.overlay.hidden = overlay === null || (live && !state.notice);
    ui.overlay.textContent = overlay ?? '';
    ui.liveBadge.hidden = !live;

    ui.unmute.textContent = ui.video.muted ? 'Unmute' : 'Mute';
    ui.unmute.setAttribute('aria-pressed', String(!ui.video.muted));
    ui.error.hidden = !state.error;
    ui.error.textContent = state.error ?? '';
  }
}

/** Resolves when ICE gathering is complete, or after `maxMs`, whichever comes first. */
function gatheringDone(pc, maxMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve();
    };
    const onChange = () => { if (pc.iceGatheringState === 'complete') finish(); };
    const timer = setTimeout(finish, maxMs);
    pc.addEventListener('icegatheringstatechange', onChange);
  });
}

/** The `code` and `message` of an error response: JSON `{code, message}`, else the text. */
async function errorOf(res) {
  const text = await res.text().catch(() => '');
  let code = `http_${res.status}`;
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = JSON.parse(text);
    if (typeof body?.code === 'string') code = body.code;
    if (typeof body?.message === 'string') message = body.message;
    else if (typeof body?.error === 'string') message = body.error;
  } catch {
    if (text.trim()) message = text.trim().slice(0, 200);
  }
  return { code, message };
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
