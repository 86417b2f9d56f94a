// Plays a <video> element in step with the party's shared timeline.
//
// `setTimeline(t)` hands over each new timeline (the caller applies only newer versions). A
// timeline whose anchor is still ahead is a change scheduled for one common instant:
//   - a pause, a rate change, a play while playing continue the current playback without a
//     jump (`continuesPlayback`): the player keeps following the old timeline and switches
//     exactly at the anchor;
//   - anything else (a seek, a play from pause, a load) holds the player, paused, at the new
//     `positionMs` (the seek happens during the lead time) and starts it at the anchor.
// The switch runs from a timer set for the anchor converted to the local clock, and a
// controller step (`correct` in drift.js) runs every `CONTROL_INTERVAL_MS` while playing.
//
// Starting a paused player: `play()` takes a while to move the media clock (≈ 40 ms in
// Chromium), so each start is measured and the next one is issued that much early (the
// latency is remembered per device). A player that would start behind the timeline by more
// than the dead band (joining mid-play, a reload) seeks a little ahead instead and waits,
// paused, for the timeline to arrive: a start on time beats a late start and a catch-up.
//
// The element's own events give the member's status: `waiting`/`stalled` without data →
// `buffering`; `playing`/`canplay`/`seeked` → `ready`. A dip into buffering must last
// `BUFFERING_DEBOUNCE_MS` before it counts: the server pauses a small party for a buffering
// member, and the hiccup of every correction seek would otherwise pause everyone.
import {
  CONTROL_INTERVAL_MS, DEAD_BAND_MS, Ewma, SEEK_LATENCY_ALPHA, SEEK_LATENCY_PRIOR_MS,
  continuesPlayback, correct, positionAt,
} from './drift.js';

/** How long the element must lack data before the member reports `buffering`. */
export const BUFFERING_DEBOUNCE_MS = 500;
/** Paused: a position off by more than this is sought to exactly. */
const PAUSED_TOLERANCE_MS = 1;
/** A timer may fire this early and still count as reaching the anchor. */
const ANCHOR_EARLY_MS = 1;
/** A start is measured this long after `play()` (before that, the controller waits). */
const START_PROBE_MS = 200;
/** Start latencies beyond this are not compensated (something else went wrong). */
const MAX_START_LEAD_MS = 300;
/** A paused player waits at most this long for the timeline to reach it; farther, it seeks. */
const MAX_HOLD_MS = 2_000;
/** A paused player that must seek to start aims at least this far ahead of the timeline. */
const MIN_SEEK_AHEAD_MS = 150;

export class SyncedVideo extends EventTarget {
  /**
   * @param {HTMLVideoElement} video
   * @param {{ serverNow(): number|null }} clock server time now, ms (js/clock.js `ClockProber`)
   */
  constructor(video, clock) {
    super();
    this.video = video;
    this.clock = clock;
    /** The URL loaded in the element (null: nothing). */
    this.url = null;
    this.metadata = false;
    /** The timeline followed now; its anchor may lie ahead (then it holds at positionMs). */
    this.current = null;
    /** A change that takes over at its anchor, continuing `current` until then. */
    this.next = null;
    this.anchorTimer = null;
    this.correcting = false;
    this.seekLatency = new Ewma(SEEK_LATENCY_ALPHA, SEEK_LATENCY_PRIOR_MS);
    /**
     * Time from `play()` until the media clock moves: the player is started this much before
     * an anchor, so that its picture starts moving at the anchor.
     */
    this.startLatency = new Ewma(SEEK_LATENCY_ALPHA, storedStartLatency());
    /** A start being measured: {at: performance.now() of play(), mediaMs, rate}. */
    this.startProbe = null;
    /** The timeline a paused player was started for (perhaps a start latency early). */
    this.started = null;
    this.startTimer = null;
    /** Seeks in a row that tried to start a paused player (each aims farther ahead). */
    this.startSeeks = 0;
    /** performance.now() when our pending seek started, or null. */
    this.seekStartedAt = null;
    this.status = 'ready';
    this.bufferingTimer = null;
    /** Diagnostics: the latest controller step and counters. */
    this.last = { errorMs: null, action: 'none', expectedMs: null, startLateMs: null };
    this.counts = { seeks: 0, nudges: 0, starts: 0, waiting: 0 };

    video.preload = 'auto';
    video.playsInline = true;
    video.preservesPitch = true;
    video.autoplay = false;

    const on = (type, fn) => video.addEventListener(type, fn);
    on('loadedmetadata', () => {
      this.metadata = true;
      this.apply();
    });
    on('seeked', () => {
      if (this.seekStartedAt !== null) {
        this.seekLatency.update(performance.now() - this.seekStartedAt);
        this.seekStartedAt = null;
      }
      this.#setStatus('ready');
      // A paused player that sought ahead to start now waits for the timeline: plan it now,
      // not at the next controller tick (which may be past the moment).
      this.apply();
    });
    on('waiting', () => this.counts.waiting++);
    for (const type of ['waiting', 'stalled', 'loadstart']) on(type, () => this.#maybeBuffering());
    for (const type of ['playing', 'canplay', 'canplaythrough']) on(type, () => this.#setStatus('ready'));
    on('error', () => this.dispatchEvent(new CustomEvent('mediaerror', {
      detail: { code: video.error?.code, message: video.error?.message || 'the video could not be played' },
    })));

    this.controlTimer = setInterval(() => this.apply(), CONTROL_INTERVAL_MS);
  }

  /** The newest shared timeline. */
  setTimeline(timeline) {
    const url = timeline.url ?? null;
    if (url !== this.url) this.#load(url);
    const now = this.clock.serverNow();
    const latest = this.next ?? this.current;
    if (now !== null && timeline.anchor > now && continuesPlayback(latest, timeline)) {
      // Keep playing the way we are until the change's instant.
      this.current = latest;
      this.next = timeline;
    } else {
      this.current = timeline;
      this.next = null;
    }
    this.correcting = false;
    this.#scheduleAnchor();
    this.apply();
  }

  /** Re-plans after the clock changed (its first sample): timers and position. */
  refresh() {
    this.#scheduleAnchor();
    this.apply();
  }

  /** Where the timeline says the player should be now (ms), or null. */
  expectedMs() {
    const now = this.clock.serverNow();
    if (now === null || !this.current) return null;
    return positionAt(this.#effective(now), now);
  }

  /** The fields of a `syncReport` (status, position at a server time). */
  report() {
    const at = this.clock.serverNow();
    const report = { status: this.status };
    if (at !== null && this.metadata && this.url) {
      report.positionMs = this.video.currentTime * 1000;
      report.at = at;
    }
    return report;
  }

  /** Brings the element in line with the timeline (on every change and every controller tick). */
  apply() {
    const v = this.video;
    const now = this.clock.serverNow();
    if (now === null || !this.current || !this.url || !this.metadata || v.error) return;
    const tl = this.#effective(now);
    const expected = positionAt(tl, now);
    const durationMs = Number.isFinite(v.duration) ? v.duration * 1000 : Infinity;
    const actual = v.currentTime * 1000;
    this.last.expectedMs = expected;
    // A change ahead (a seek, a play) holds the player at its position until the anchor,
    // unless we already started it a start latency early.
    const holding = now < tl.anchor - ANCHOR_EARLY_MS && this.started !== tl;

    if (tl.paused || expected >= durationMs || (holding && !v.paused)) {
      clearTimeout(this.startTimer);
      this.started = null;
      this.startProbe = null;
      if (!v.paused) v.pause();
      this.correcting = false;
      if (v.playbackRate !== tl.rate) v.playbackRate = tl.rate;
      const target = Math.min(expected, durationMs);
      this.last.errorMs = actual - target;
      if (!v.seeking && Math.abs(actual - target) > PAUSED_TOLERANCE_MS) this.#seek(target);
      return;
    }

    if (v.paused) {
      this.#start(tl, now, actual, expected);
      return;
    }

    // Playing: the controller. Nothing to measure while seeking, starved of data, or before
    // the anchor (started early).
    if (v.seeking || v.readyState < HTMLMediaElement.HAVE_FUTURE_DATA || now < tl.anchor) return;
    if (this.startProbe) {
      // Just started: measure how late the media clock began moving (wall time elapsed minus
      // media time advanced) before steering, so the next start can begin that much earlier.
      const elapsed = performance.now() - this.startProbe.at;
      if (elapsed < START_PROBE_MS) return;
      const late = elapsed - (actual - this.startProbe.mediaMs) / this.startProbe.rate;
      if (late >= 0 && late <= MAX_START_LEAD_MS) {
        this.startLatency.update(late);
        storeStartLatency(this.startLatency.value);
      }
      this.last.startLateMs = late;
      this.startProbe = null;
    }
    const step = correct({
      expectedMs: expected,
      actualMs: actual,
      rate: tl.rate,
      seekLatencyMs: this.seekLatency.value ?? 0,
      correcting: this.correcting,
    });
    this.last.errorMs = step.errorMs;
    this.last.action = step.action;
    this.correcting = step.correcting;
    if (step.action === 'seek') {
      v.playbackRate = tl.rate;
      this.#seek(Math.min(step.seekToMs, durationMs));
    } else {
      if (step.action === 'nudge') this.counts.nudges++;
      if (v.playbackRate !== step.playbackRate) v.playbackRate = step.playbackRate;
    }
  }

  /**
   * Starts a paused player so that its media clock moves in step with the timeline: wait (paused)
   * until the timeline reaches the player's position, minus the start latency, then play. At an
   * anchor that is "start at the anchor"; when joining mid-play (or when too late to start
   * without a visible error), first seek a little ahead of the timeline, then wait for it.
   */
  #start(tl, now, actual, expected) {
    const v = this.video;
    clearTimeout(this.startTimer);
    this.startTimer = null;
    this.last.errorMs = actual - expected;
    if (v.seeking) return; // `seeked` runs apply() again
    const lead = this.#startLead();
    // Server time at which the timeline is at the player's position (it holds at positionMs
    // until the anchor, so a position behind that is never reached).
    const reachable = actual >= tl.positionMs - PAUSED_TOLERANCE_MS;
    const reachAt = tl.anchor + Math.max(0, actual - tl.positionMs) / tl.rate;
    const wait = reachAt - lead - now;
    if (reachable && wait > 1 && wait <= MAX_HOLD_MS) {
      this.startTimer = setTimeout(() => this.apply(), wait);
      return;
    }
    if (!reachable || wait > MAX_HOLD_MS || -wait * tl.rate > DEAD_BAND_MS) {
      // Too far (ahead or behind) to start from here: seek ahead of the timeline by enough
      // to complete the seek, then wait for the timeline to arrive.
      // Each further attempt in a row aims twice as far ahead (a slow seek, a busy page).
      const base = Math.max(MIN_SEEK_AHEAD_MS, 2 * (this.seekLatency.value ?? 0) + lead);
      const ahead = Math.min(MAX_HOLD_MS / 2, base * 2 ** Math.min(this.startSeeks, 4));
      this.startSeeks++;
      this.#seek(positionAt(tl, now + ahead));
      return;
    }
    this.startSeeks = 0;
    // On time, or late by less than the dead band (the controller takes it from there).
    this.startProbe = { at: performance.now(), mediaMs: actual, rate: tl.rate };
    this.started = tl;
    this.correcting = false;
    v.playbackRate = tl.rate;
    this.counts.starts++;
    this.#play();
  }

  destroy() {
    clearInterval(this.controlTimer);
    clearTimeout(this.anchorTimer);
    clearTimeout(this.startTimer);
    clearTimeout(this.bufferingTimer);
  }

  /** The timeline in force at server time `now` (promotes `next` once its anchor passed). */
  #effective(now) {
    if (this.next && now >= this.next.anchor - ANCHOR_EARLY_MS) {
      this.current = this.next;
      this.next = null;
      this.correcting = false;
    }
    return this.current;
  }

  /** How much before an anchor a paused player is started (its measured start latency). */
  #startLead() {
    return Math.min(MAX_START_LEAD_MS, Math.max(0, this.startLatency.value ?? 0));
  }

  /** A timer for the next anchor ahead: where playback starts or changes. */
  #scheduleAnchor() {
    clearTimeout(this.anchorTimer);
    this.anchorTimer = null;
    let anchor = null;
    if (this.next) anchor = this.next.anchor;
    else if (this.current && !this.current.paused) anchor = this.current.anchor - this.#startLead();
    const now = this.clock.serverNow();
    if (anchor === null || now === null || anchor <= now) return;
    // Both clocks tick at the same rate, so the wait is the same on either.
    this.anchorTimer = setTimeout(() => {
      this.anchorTimer = null;
      this.apply();
      this.#scheduleAnchor();
    }, anchor - now);
  }

  #load(url) {
    this.url = url;
    this.metadata = false;
    this.correcting = false;
    this.video.pause();
    if (url) {
      this.video.src = url;
    } else {
      this.video.removeAttribute('src');
    }
    this.video.load();
    this.#setStatus('ready');
    // Not ready until it can play; reported only if loading takes a while (see the top).
    if (url) this.#maybeBuffering();
  }

  #seek(ms) {
    this.counts.seeks++;
    this.seekStartedAt = performance.now();
    this.video.currentTime = Math.max(0, ms) / 1000;
  }

  #play() {
    this.video.play().catch((err) => {
      if (err.name === 'NotAllowedError' && !this.video.muted) {
        // Sound needs a gesture here: play muted and let the person unmute.
        this.video.muted = true;
        this.dispatchEvent(new CustomEvent('autoplayblocked'));
        this.video.play().catch(() => {});
      } else if (err.name !== 'AbortError') {
        console.warn('[party] play() failed:', err.message);
      }
    });
  }

  #maybeBuffering() {
    if (this.bufferingTimer !== null) return;
    this.bufferingTimer = setTimeout(() => {
      this.bufferingTimer = null;
      const v = this.video;
      if (this.url && (v.readyState < HTMLMediaElement.HAVE_FUTURE_DATA || v.networkState === HTMLMediaElement.NETWORK_EMPTY)) {
        this.#setStatus('buffering');
      }
    }, BUFFERING_DEBOUNCE_MS);
  }

  #setStatus(status) {
    if (status === 'ready') {
      clearTimeout(this.bufferingTimer);
      this.bufferingTimer = null;
    }
    if (status === this.status) return;
    this.status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: { status } }));
  }
}

/**
 * The start latency is a property of the device and browser, not of the party: remember it
 * (localStorage) so that the first start of the next session is on time too.
 */
const START_LATENCY_KEY = 'marquee.startLatencyMs';

function storedStartLatency() {
  try {
    const v = Number(localStorage.getItem(START_LATENCY_KEY));
    return Number.isFinite(v) && v > 0 && v <= MAX_START_LEAD_MS ? v : 0;
  } catch {
    return 0; // storage disabled
  }
}

function storeStartLatency(ms) {
  try {
    localStorage.setItem(START_LATENCY_KEY, ms.toFixed(1));
  } catch {
    // storage disabled: measured again next time
  }
}
