// Clock synchronization with the server, NTP style (RFC 5905 §8 on-wire exchange, with the
// minimum-delay filter of its clock filter algorithm, §10). The same algorithm as the Rust
// `sync::ClockSync` (sync/src/clock.rs); the golden vectors in
// sync/tests/golden/sync-vectors.json keep the two identical (tests/golden.test.mjs).
//
// The page sends `{"type":"timeProbe","t0":performance.now()}`; the server answers
// `timeReply {t0, t1, t2}` with its wall clock (ms since the Unix epoch) when the probe
// arrived (t1) and when the reply left (t2); t3 is performance.now() on arrival. Then
//   offset = ((t1 − t0) + (t2 − t3)) / 2,   delay = (t3 − t0) − (t2 − t1).
// The offset's error is at most delay / 2 (all of the delay on one side). Queuing only ever
// adds delay, so the lowest-delay sample of a sliding window is the most truthful one.
//
// The local clock is the monotonic `performance.now()`, never `Date.now()`: the wall clock
// of a phone jumps when it syncs with NTP, the monotonic clock does not.
//
// Everything above `ClockProber` is pure and runs in node (tests/party-unit.test.mjs).

/** Samples kept: at one probe every 3 s, about 48 s of history (Rust: `WINDOW`). */
export const WINDOW = 16;
/** Probes sent right after joining, so that one is likely to cross an idle network. */
export const JOIN_BURST = 8;
/** Spacing of the join burst. */
export const BURST_SPACING_MS = 50;
/** Steady-state probe interval. */
export const PROBE_INTERVAL_MS = 3_000;
/** A probe unanswered this long is forgotten (its reply, if any, is ignored). */
export const PROBE_TIMEOUT_MS = 10_000;

/** Server clock minus client clock, as one sample `{t0, t1, t2, t3}` sees it. */
export function sampleOffset(s) {
  return ((s.t1 - s.t0) + (s.t2 - s.t3)) / 2;
}

/** Round-trip network delay of one sample, excluding the server's processing time. */
export function sampleDelay(s) {
  return Math.max(0, (s.t3 - s.t0) - (s.t2 - s.t1));
}

/** The estimate of the server clock from a sliding window of samples. */
export class ClockSync {
  constructor(window = WINDOW) {
    this.window = window;
    /** Oldest first. */
    this.samples = [];
  }

  /** Adds a completed probe `{t0, t1, t2, t3}`; the oldest falls out of the window. */
  add(sample) {
    if (![sample.t0, sample.t1, sample.t2, sample.t3].every(Number.isFinite)) return;
    this.samples.push(sample);
    if (this.samples.length > this.window) this.samples.shift();
  }

  /** The sample with the lowest delay (the earliest of equals), or null. */
  best() {
    let best = null;
    for (const s of this.samples) {
      if (best === null || sampleDelay(s) < sampleDelay(best)) best = s;
    }
    return best;
  }

  /** Server clock minus client clock in ms, or null before the first sample. */
  get offset() {
    const b = this.best();
    return b ? sampleOffset(b) : null;
  }

  /** The bound on the offset's error: half the best round trip. */
  get errorBound() {
    const b = this.best();
    return b ? sampleDelay(b) / 2 : null;
  }

  /** The best round trip. */
  get rtt() {
    const b = this.best();
    return b ? sampleDelay(b) : null;
  }

  get ready() {
    return this.samples.length > 0;
  }

  /** Server time for a client clock reading, or null before the first sample. */
  serverTime(clientMs) {
    const o = this.offset;
    return o === null ? null : clientMs + o;
  }

  /** Client clock reading at which the server clock shows `serverMs`. */
  localTime(serverMs) {
    const o = this.offset;
    return o === null ? null : serverMs - o;
  }
}

/**
 * Sends probes over a connection and feeds the replies to a `ClockSync`: a burst of
 * `JOIN_BURST` probes `BURST_SPACING_MS` apart on `start()`, then one every
 * `PROBE_INTERVAL_MS`. The samples survive reconnects (a new connection only restarts the
 * burst): the offset between two clocks does not depend on the socket.
 */
export class ClockProber {
  /**
   * @param {object} o
   * @param {(t0: number) => boolean} o.send sends `{"type":"timeProbe","t0":t0}`.
   * @param {() => number} [o.now] the local monotonic clock.
   * @param {ClockSync} [o.sync]
   * @param {(prober: ClockProber) => void} [o.onSample] called after every new sample.
   */
  constructor({ send, now = () => performance.now(), sync = new ClockSync(), onSample = () => {} }) {
    this.sendProbe = send;
    this.now = now;
    this.sync = sync;
    this.onSample = onSample;
    /** t0 → sent, for probes awaiting a reply. */
    this.outstanding = new Set();
    this.timers = [];
  }

  /** (Re)starts probing: a burst, then the steady interval. */
  start() {
    this.stop();
    for (let i = 0; i < JOIN_BURST; i++) {
      this.timers.push(setTimeout(() => this.probe(), i * BURST_SPACING_MS));
    }
    this.timers.push(setTimeout(() => {
      this.timers.push(setInterval(() => this.probe(), PROBE_INTERVAL_MS));
    }, (JOIN_BURST - 1) * BURST_SPACING_MS));
  }

  stop() {
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.timers = [];
    this.outstanding.clear();
  }

  probe() {
    const t0 = this.now();
    if (!this.sendProbe(t0)) return;
    this.outstanding.add(t0);
    // Forget probes that will never be answered (a dropped socket).
    for (const old of this.outstanding) {
      if (t0 - old > PROBE_TIMEOUT_MS) this.outstanding.delete(old);
    }
  }

  /** Feeds a `timeReply`; returns false for a reply to no probe of ours. */
  handleReply({ t0, t1, t2 }) {
    const t3 = this.now();
    if (!this.outstanding.delete(t0)) return false;
    this.sync.add({ t0, t1, t2, t3 });
    this.onSample(this);
    return true;
  }

  /** Server wall-clock ms now, or null before the first reply. */
  serverNow() {
    return this.sync.serverTime(this.now());
  }

  get offset() { return this.sync.offset; }
  get errorBound() { return this.sync.errorBound; }
  get rtt() { return this.sync.rtt; }
  get ready() { return this.sync.ready; }
}
