// Drift correction for a shared playback timeline: pure functions (they run in node, see
// tests/party-unit.test.mjs). `js/synced-video.js` applies them to a <video> element. The
// Rust twin is `sync::drift` (sync/src/drift.rs, used by the sync-accuracy benchmark); the
// golden vectors in sync/tests/golden/sync-vectors.json keep the two identical
// (tests/golden.test.mjs here, sync/tests/golden.rs there).
//
// A timeline is the absolute tuple the server keeps (protocol/src/timeline.rs):
//   {url, positionMs, anchor, rate, paused}: at server time `anchor` the media was at
//   `positionMs` and advanced at `rate` unless `paused`.
// Every device computes where it should be from the tuple and its synchronized clock, and
// steers its player there:
//   |error| ≤ 40 ms     nothing: the timeline's rate (the dead band; closer than any person
//                       notices, and touching the rate costs smoothness);
//   |error| ≤ 1500 ms   nudge the rate by at most ±5 %, proportionally to the error (pitch
//                       preserved): invisible, and 5 % closes 50 ms per second;
//   beyond             seek, aiming ahead by the measured seek latency, so the player lands
//                       where the timeline is when the seek completes.
// A correction that starts continues until the error is within `SETTLE_MS` (hysteresis), so
// that a device does not park at the edge of the dead band.

/** Errors up to this are left alone. */
export const DEAD_BAND_MS = 40;
/** Once correcting, nudge until the error is this small. */
export const SETTLE_MS = 8;
/** The largest rate nudge, as a fraction of the timeline's rate. */
export const MAX_NUDGE = 0.05;
/** The nudge per ms of error: the full ±5 % from 100 ms on (a 1 s time constant below). */
export const NUDGE_PER_MS = MAX_NUDGE / 100;
/** Errors beyond this are fixed by seeking: nudging 1.5 s at 5 % would take 30 s. */
export const SEEK_THRESHOLD_MS = 1_500;
/** How often the controller runs while playing. */
export const CONTROL_INTERVAL_MS = 250;
/** Weight of a new seek-latency measurement in the moving average. */
export const SEEK_LATENCY_ALPHA = 0.3;
/** Seek latency assumed before the first measurement. */
export const SEEK_LATENCY_PRIOR_MS = 50;
/** `continuesPlayback`'s default tolerance. */
export const CONTINUES_TOLERANCE_MS = 5;

/**
 * The media position (ms) at server time `serverMs` (Rust: `Timeline::position_at`). Before the
 * anchor of a change scheduled ahead, the position holds at `positionMs`.
 */
export function positionAt(timeline, serverMs) {
  if (timeline.paused) return timeline.positionMs;
  return timeline.positionMs + Math.max(0, serverMs - timeline.anchor) * timeline.rate;
}

/**
 * One controller step.
 * @param {object} o
 * @param {number} o.expectedMs where the timeline is now
 * @param {number} o.actualMs where the player is now
 * @param {number} o.rate the timeline's rate
 * @param {number} [o.seekLatencyMs] measured time from setting `currentTime` to `seeked`
 * @param {boolean} [o.correcting] whether the previous step was nudging (hysteresis)
 * @returns {{action: 'none'|'nudge'|'seek', errorMs: number, playbackRate: number,
 *            seekToMs: number|null, correcting: boolean}}
 *   `errorMs` is actual − expected (positive: ahead).
 */
export function correct({ expectedMs, actualMs, rate, seekLatencyMs = 0, correcting = false }) {
  const errorMs = actualMs - expectedMs;
  const magnitude = Math.abs(errorMs);
  if (magnitude > SEEK_THRESHOLD_MS) {
    // The media advances `rate` ms per ms of seeking.
    return {
      action: 'seek', errorMs, playbackRate: rate, seekToMs: expectedMs + seekLatencyMs * rate, correcting: false,
    };
  }
  const inBand = correcting ? magnitude <= SETTLE_MS : magnitude <= DEAD_BAND_MS;
  if (inBand) {
    return { action: 'none', errorMs, playbackRate: rate, seekToMs: null, correcting: false };
  }
  const nudge = clamp(-errorMs * NUDGE_PER_MS, -MAX_NUDGE, MAX_NUDGE);
  return { action: 'nudge', errorMs, playbackRate: rate * (1 + nudge), seekToMs: null, correcting: true };
}

/** An exponentially weighted moving average. */
export class Ewma {
  constructor(alpha = SEEK_LATENCY_ALPHA, initial = null) {
    this.alpha = alpha;
    this.value = initial;
    this.count = 0;
  }

  update(x) {
    if (!Number.isFinite(x)) return this.value;
    this.value = this.value === null || this.count === 0 ? x : this.value + this.alpha * (x - this.value);
    this.count++;
    return this.value;
  }
}

/**
 * Whether a change scheduled at `next.anchor` continues the playback of `current` without a
 * jump (pause, rate change, play while playing): the player then keeps following `current`
 * until the anchor. Otherwise (seek, play from pause, load) it holds at `next.positionMs`
 * until the anchor, so that the seek happens during the lead time.
 */
export function continuesPlayback(current, next, toleranceMs = CONTINUES_TOLERANCE_MS) {
  if (!current || current.paused || current.url !== next.url) return false;
  return Math.abs(positionAt(current, next.anchor) - next.positionMs) <= toleranceMs;
}

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}
