// WebSocket signaling client for the Marquee protocol (docs/protocol.md).
//
// `Signaling` owns one logical connection to `ws(s)://<host>/ws` and keeps it alive:
// when the socket closes (or a ping goes unanswered) it reconnects with exponential
// backoff and jitter. Every (re)opened socket is a fresh server session, so the page
// listens for `open` and sends `join` again; the server forgets everything about the
// old socket. Messages are dispatched as DOM events named after their `type`
// (`joined`, `offer`, `answer`, `roomState`, `mediaState`, `pong`, `error`), with the
// parsed message in `event.detail`. The watch party (`partyJoin`, …) rides the same kind of
// connection: its messages are dispatched the same way (`partyJoined`, `partyEvent`, …).
//
// Access and relays: an access token (JWT) given as `?token=` in the page's address is sent
// in every `join` and `partyJoin` (the server ignores it when it runs without auth), and the
// TURN servers of the last `joined` are kept in `iceServers` for the peer connections
// (js/rtc.js) that the page creates after it.

/** Protocol version spoken by this client (`PROTOCOL_VERSION` in protocol.rs). */
export const PROTOCOL_VERSION = 1;

/** Until the server tells us its limit in `joined.limits`, assume the documented default. */
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024;

/** Interval between liveness pings; a ping unanswered by the next one closes the socket. */
const PING_INTERVAL_MS = 15_000;

/** Reconnect backoff: first delay, growth factor, cap. Jitter spreads a crowd of viewers. */
const BACKOFF_START_MS = 500;
const BACKOFF_FACTOR = 2;
const BACKOFF_MAX_MS = 10_000;

/** Endpoint on the host that served the page. */
export function defaultUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

/** The access token in the page's address (`?token=`), or null. */
export function pageToken(loc = globalThis.location) {
  if (!loc) return null;
  return new URLSearchParams(loc.search).get('token')?.trim() || null;
}

/**
 * The usable entries of a server's `iceServers` list (the `RTCIceServer` shape:
 * `{urls, username, credential}`): anything malformed is dropped, so a bad entry cannot make
 * `new RTCPeerConnection` throw.
 */
export function validIceServers(list) {
  if (!Array.isArray(list)) return [];
  const out = [];
  for (const s of list) {
    if (!s || typeof s !== 'object') continue;
    const urls = (Array.isArray(s.urls) ? s.urls : [s.urls])
      .filter((u) => typeof u === 'string' && /^(stuns?|turns?):/i.test(u));
    if (urls.length === 0) continue;
    const server = { urls };
    if (typeof s.username === 'string') server.username = s.username;
    if (typeof s.credential === 'string') server.credential = s.credential;
    out.push(server);
  }
  return out;
}

export class Signaling extends EventTarget {
  /**
   * @param {string} [url] WebSocket URL; defaults to `/ws` on the page's host.
   * @param {{token?: string | null}} [options] `token`: access token sent with every join;
   *   defaults to the page's `?token=`.
   */
  constructor(url = defaultUrl(), { token = pageToken() } = {}) {
    super();
    this.url = url;
    this.token = token;
    /** TURN/STUN servers from the last `joined` (RTCIceServer[]; empty without TURN). */
    this.iceServers = [];
    /** 'idle' | 'connecting' | 'open' | 'closed' (waiting to reconnect) */
    this.state = 'idle';
    this.maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.nextPingId = 1;
    this.awaitingPong = null;
    this.stopped = true;
  }

  /** Opens the connection (idempotent) and keeps reconnecting until `stop()`. */
  start() {
    this.stopped = false;
    if (!this.ws && !this.retryTimer) this.#connect();
  }

  /** Closes the connection for good. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.#dropSocket();
    this.#setState('idle');
  }

  /**
   * Drops the current socket and reconnects: the server ends the old session.
   * @param {number} [delayMs] wait this long instead of the backoff delay.
   */
  restart(delayMs) {
    if (this.stopped) return;
    this.#dropSocket();
    this.#scheduleReconnect(delayMs);
  }

  /** Sends `{type, ...fields}`; returns false when not connected (the message is dropped). */
  send(type, fields = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    const text = JSON.stringify({ type, ...fields });
    // The server would answer `message_too_large` and drop it; say so locally as well.
    if (new TextEncoder().encode(text).length > this.maxMessageBytes) {
      console.warn(`[signaling] ${type} exceeds ${this.maxMessageBytes} bytes; sending anyway`);
    }
    this.ws.send(text);
    return true;
  }

  // Typed senders, one per ClientMessage variant.
  join({ role, room, name = '', hostKey, token = this.token }) {
    const msg = { version: PROTOCOL_VERSION, role, name };
    if (room) msg.room = room;
    if (hostKey) msg.hostKey = hostKey;
    if (token) msg.token = token;
    return this.send('join', msg);
  }
  offer(sdp) { return this.send('offer', { sdp }); }
  answer(sdp) { return this.send('answer', { sdp }); }
  /** @param {RTCIceCandidate | RTCIceCandidateInit} c */
  candidate(c) {
    const init = typeof c.toJSON === 'function' ? c.toJSON() : c;
    const candidate = { candidate: init.candidate ?? '' };
    if (init.sdpMid != null) candidate.sdpMid = init.sdpMid;
    if (init.sdpMLineIndex != null) candidate.sdpMLineIndex = init.sdpMLineIndex;
    if (init.usernameFragment != null) candidate.usernameFragment = init.usernameFragment;
    return this.send('candidate', { candidate });
  }
  leave() { return this.send('leave'); }

  // Watch-party senders (protocol/src/wire.rs; js/party.js).
  /** Creates a party (no `party`) or joins one; `memberId`/`memberKey`/`lastSeq` resume. */
  partyJoin({ party, name = '', memberId, memberKey, lastSeq, token = this.token }) {
    const msg = { version: PROTOCOL_VERSION, name };
    if (party) msg.party = party;
    if (token) msg.token = token;
    if (memberId && memberKey) {
      msg.memberId = memberId;
      msg.memberKey = memberKey;
    }
    if (Number.isFinite(lastSeq) && lastSeq > 0) msg.lastSeq = lastSeq;
    return this.send('partyJoin', msg);
  }
  /** @param {{action: string}} command e.g. `{action: 'seek', positionMs: 1000}` */
  playback(opId, command, baseVersion) {
    const msg = { opId, command };
    if (baseVersion != null) msg.baseVersion = baseVersion;
    return this.send('playback', msg);
  }
  setControl(opId, control) { return this.send('setControl', { opId, control }); }
  chat(opId, text) { return this.send('chat', { opId, text }); }
  react(opId, emoji) { return this.send('react', { opId, emoji }); }
  typing(typing) { return this.send('typing', { typing }); }
  camera(on) { return this.send('camera', { on }); }
  syncReport(report) { return this.send('syncReport', report); }
  timeProbe(t0) { return this.send('timeProbe', { t0 }); }
  ping() {
    const id = this.nextPingId++;
    this.awaitingPong = id;
    return this.send('ping', { id });
  }

  #connect() {
    this.retryTimer = null;
    this.#setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error('[signaling] cannot open', this.url, err);
      this.#scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.awaitingPong = null;
      this.#setState('open');
      this.pingTimer = setInterval(() => this.#heartbeat(), PING_INTERVAL_MS);
      this.dispatchEvent(new Event('open'));
    };
    ws.onmessage = (ev) => this.#onText(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return; // an old socket we already dropped
      console.info(`[signaling] closed (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`);
      this.#dropSocket();
      this.dispatchEvent(new CustomEvent('close', { detail: { code: ev.code, reason: ev.reason } }));
      if (!this.stopped) this.#scheduleReconnect();
    };
    // `error` is always followed by `close`, which does the work.
    ws.onerror = () => {};
  }

  #onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      console.warn('[signaling] ignoring non-JSON message');
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    if (msg.type === 'joined') {
      if (msg.limits?.maxMessageBytes) this.maxMessageBytes = msg.limits.maxMessageBytes;
      // Fresh credentials with every session; peer connections made from now on use them.
      this.iceServers = validIceServers(msg.iceServers);
    }
    if (msg.type === 'pong' && msg.id === this.awaitingPong) this.awaitingPong = null;
    this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
    this.dispatchEvent(new CustomEvent('message', { detail: msg }));
  }

  #heartbeat() {
    if (this.awaitingPong !== null) {
      console.warn('[signaling] no pong in time; reconnecting');
      this.restart();
      return;
    }
    this.ping();
  }

  #dropSocket() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close();
    }
  }

  #scheduleReconnect(delayMs) {
    clearTimeout(this.retryTimer);
    if (delayMs === undefined) {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * BACKOFF_FACTOR ** this.attempt);
      delayMs = base / 2 + Math.random() * (base / 2);
      this.attempt++;
    }
    this.#setState('closed');
    this.retryTimer = setTimeout(() => this.#connect(), delayMs);
  }

  #setState(state) {
    if (this.state === state && state !== 'closed') return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state } }));
  }
}
