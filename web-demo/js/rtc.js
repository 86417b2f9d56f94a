// The WebRTC halves of a live-room session (docs/protocol.md), shared by host.html, watch.html
// and the watch party's cameras. Each owns one RTCPeerConnection on one `Signaling`
// connection; the page owns the connection, the join and what to show.
//
// - `Publisher` ("Host publish"): sendonly audio + video transceivers, our offer, the server's
//   answer. Both transceivers exist even without a track, so a source switch is a
//   `replaceTrack` and never a renegotiation.
// - `Subscriber` ("Viewer subscribe"): the server offers on join and again whenever the room's
//   tracks change; every offer is answered, strictly in order, on the same peer connection.
//   It plays the newest video and the newest audio track.
//
// Both emit `statechange` ({state}: the peer connection's connectionState) and `failed`
// ({reason, kind}): kind 'connection' when the connection failed or stayed `disconnected` for
// `DISCONNECTED_GRACE_MS` (the page then starts a new session: rejoin), kind 'sdp' when the
// server's offer or answer could not be applied. ICE candidates are sent only after the first
// offer/answer (the server refuses them before: candidate_before_offer).
//
// Relays: every peer connection gets the TURN servers of the session's `joined` message
// (`signaling.iceServers`), and `?relay=1` in the page's address makes it use only relayed
// candidates (`iceTransportPolicy: 'relay'`): for trying TURN out, or on networks where only
// the relay gets through.

/** A peer connection that stays `disconnected` this long is treated as failed. */
export const DISCONNECTED_GRACE_MS = 5_000;

/** True when the page's address asks for relayed media only (`?relay=1`). */
export function relayOnly(loc = globalThis.location) {
  if (!loc) return false;
  const value = new URLSearchParams(loc.search).get('relay');
  return value === '1' || value === 'true';
}

/** The `RTCConfiguration` for a peer connection: these ICE servers, and the page's policy. */
export function rtcConfiguration(iceServers = [], loc = globalThis.location) {
  return { iceServers, iceTransportPolicy: relayOnly(loc) ? 'relay' : 'all' };
}

/**
 * A new peer connection with `config`; should the browser refuse the ICE servers (say, a
 * URL scheme it does not know), one without them, which still works unless relay-only.
 */
export function createPeerConnection(config) {
  try {
    return new RTCPeerConnection(config);
  } catch (err) {
    if (!config.iceServers?.length) throw err;
    console.warn('[rtc] ICE servers refused, continuing without them:', err.message, config.iceServers);
    return new RTCPeerConnection({ ...config, iceServers: [] });
  }
}

/** The parts both halves share: candidates, connection state, teardown. */
class PeerSession extends EventTarget {
  constructor(signaling, tag) {
    super();
    this.signaling = signaling;
    this.tag = tag;
    this.pc = null;
    this.pendingCandidates = [];
    /** Candidates may go out once our first SDP did. */
    this.sdpSent = false;
    this.disconnectTimer = null;
  }

  /** The current peer connection's state, or 'new' when there is none. */
  get state() {
    return this.pc?.connectionState ?? 'new';
  }

  close() {
    clearTimeout(this.disconnectTimer);
    const pc = this.pc;
    this.pc = null;
    if (pc) {
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      pc.close();
    }
    this.pendingCandidates = [];
    this.sdpSent = false;
  }

  newPc() {
    this.close();
    const pc = createPeerConnection(rtcConfiguration(this.signaling.iceServers ?? []));
    this.pc = pc;
    pc.onicecandidate = (e) => {
      if (pc !== this.pc || !e.candidate) return;
      if (this.sdpSent) this.signaling.candidate(e.candidate);
      else this.pendingCandidates.push(e.candidate);
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.#onState(pc.connectionState);
    };
    return pc;
  }

  /** After our SDP went out: the candidates gathered meanwhile follow it. */
  flushCandidates() {
    if (this.sdpSent) return;
    this.sdpSent = true;
    for (const c of this.pendingCandidates) this.signaling.candidate(c);
    this.pendingCandidates = [];
  }

  #onState(state) {
    clearTimeout(this.disconnectTimer);
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state } }));
    if (state === 'failed') {
      this.fail('Media connection failed');
    } else if (state === 'disconnected') {
      this.disconnectTimer = setTimeout(() => this.fail('Media connection lost'), DISCONNECTED_GRACE_MS);
    }
  }

  fail(reason, kind = 'connection') {
    console.warn(`[${this.tag}] ${reason}`);
    this.dispatchEvent(new CustomEvent('failed', { detail: { reason, kind } }));
  }
}

export class Publisher extends PeerSession {
  constructor(signaling, tag = 'publish') {
    super(signaling, tag);
    this.audioSender = null;
    this.videoSender = null;
  }

  /**
   * Starts a new peer connection sending `audio` and `video` (either may be null) and sends
   * its offer. Resolves once the offer is out; throws if the browser could not make one.
   */
  async publish({ audio = null, video = null }) {
    const pc = this.newPc();
    const stream = new MediaStream([audio, video].filter(Boolean));
    this.audioSender = pc.addTransceiver(audio ?? 'audio', { direction: 'sendonly', streams: [stream] }).sender;
    this.videoSender = pc.addTransceiver(video ?? 'video', { direction: 'sendonly', streams: [stream] }).sender;
    try {
      await pc.setLocalDescription(await pc.createOffer());
    } catch (err) {
      if (pc !== this.pc) return; // closed meanwhile (stop, reconnect): nothing to report
      throw err;
    }
    if (pc !== this.pc) return;
    this.signaling.offer(pc.localDescription.sdp);
    this.flushCandidates();
  }

  /** Applies the server's answer; a stray one (no offer pending) is ignored. */
  async handleAnswer(sdp) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') {
      console.warn(`[${this.tag}] ignoring answer in state`, pc?.signalingState);
      return;
    }
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (err) {
      if (pc === this.pc) this.fail(`The server's answer was not usable: ${err.message}`, 'sdp');
    }
  }

  /** Same sender, new source: no renegotiation, viewers just see (hear) the new track. */
  async replaceTrack(kind, track) {
    const sender = kind === 'audio' ? this.audioSender : this.videoSender;
    if (sender) await sender.replaceTrack(track);
  }

  close() {
    super.close();
    this.audioSender = this.videoSender = null;
  }
}

export class Subscriber extends PeerSession {
  constructor(signaling, tag = 'watch') {
    super(signaling, tag);
    /** Tracks of the current peer connection's receivers, in arrival order. */
    this.received = [];
    /** What to play: the newest live video track and audio track. */
    this.stream = new MediaStream();
    this.negotiation = Promise.resolve();
  }

  /** Answers a server offer, after any earlier one. */
  handleOffer(sdp) {
    this.negotiation = this.negotiation.then(() => this.#answer(sdp));
    return this.negotiation;
  }

  close() {
    super.close();
    this.negotiation = Promise.resolve();
    this.received = [];
    const had = this.stream.getTracks().length > 0;
    this.stream = new MediaStream();
    if (had) this.#emitStream();
  }

  async #answer(sdp) {
    if (!this.pc) {
      const pc = this.newPc();
      pc.ontrack = (e) => {
        if (pc !== this.pc || this.received.includes(e.track)) return;
        this.received.push(e.track);
        e.track.addEventListener('ended', () => this.#syncTracks());
      };
    }
    const pc = this.pc;
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp });
      await pc.setLocalDescription(await pc.createAnswer());
    } catch (err) {
      if (pc !== this.pc) return; // torn down meanwhile: nothing to repair
      this.fail(`Could not apply the server's offer (${err.message})`, 'sdp');
      return;
    }
    if (pc !== this.pc) return;
    this.signaling.answer(pc.localDescription.sdp);
    this.flushCandidates();
    this.#syncTracks();
  }

  /** After a (re)negotiation: forget tracks whose m-line no longer receives, then choose. */
  #syncTracks() {
    if (!this.pc) return;
    const receiving = new Set(this.pc.getTransceivers()
      .filter((t) => !t.stopped && (t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv'))
      .map((t) => t.receiver.track));
    this.received = this.received.filter((t) => receiving.has(t) && t.readyState === 'live');
    // A room has one host source of each kind; should a renegotiation leave an older m-line
    // around, the newest one is the live one.
    const newest = (kind) => this.received.filter((t) => t.kind === kind).at(-1);
    const chosen = [newest('video'), newest('audio')].filter(Boolean);
    const playing = this.stream.getTracks();
    if (chosen.length === playing.length && chosen.every((t) => playing.includes(t))) return;
    // A fresh stream makes a media element pick up the new set of tracks.
    this.stream = new MediaStream(chosen);
    this.#emitStream();
  }

  #emitStream() {
    const tracks = this.stream.getTracks();
    this.dispatchEvent(new CustomEvent('stream', { detail: { stream: tracks.length ? this.stream : null } }));
  }
}
