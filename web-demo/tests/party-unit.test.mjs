// Unit tests of the watch party's pure client logic (no browser, no server):
//   node --test web-demo/tests/party-unit.test.mjs
// js/clock.js mirrors sync/src/clock.rs (same cases as its Rust tests); js/drift.js mirrors
// sync/src/timeline.rs `position_at` and holds the drift controller.
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  BURST_SPACING_MS, ClockProber, ClockSync, JOIN_BURST, PROBE_INTERVAL_MS, WINDOW, sampleDelay, sampleOffset,
} from '../js/clock.js';
import {
  DEAD_BAND_MS, Ewma, MAX_NUDGE, SEEK_THRESHOLD_MS, SETTLE_MS, continuesPlayback, correct, positionAt,
} from '../js/drift.js';

/** A probe through a network with `up`/`down` one-way delays, the server `offset` ahead. */
function probe(t0, up, down, offset) {
  const t1 = t0 + up + offset;
  const t2 = t1 + 0.5;
  return { t0, t1, t2, t3: t2 - offset + down };
}

const near = (actual, expected, what, eps = 1e-9) =>
  assert.ok(Math.abs(actual - expected) <= eps, `${what}: ${actual} != ${expected}`);

// ---- clock.js -------------------------------------------------------------------------------

test('clock: a symmetric path gives the exact offset', () => {
  const s = probe(1000, 40, 40, 12_345);
  near(sampleOffset(s), 12_345, 'offset');
  near(sampleDelay(s), 80, 'delay');
  const clock = new ClockSync();
  assert.equal(clock.offset, null, 'no estimate before a sample');
  clock.add(s);
  near(clock.serverTime(2000), 14_345, 'serverTime');
  near(clock.localTime(14_345), 2000, 'localTime');
});

test('clock: the lowest-delay sample wins and bounds the error', () => {
  const clock = new ClockSync();
  clock.add(probe(0, 30, 230, 500));
  clock.add(probe(10, 31, 31, 500));
  clock.add(probe(20, 190, 30, 500));
  near(clock.offset, 500, 'offset');
  near(clock.rtt, 62, 'rtt');
  near(clock.errorBound, 31, 'error bound');
  // An asymmetric path errs, but within the bound.
  const lopsided = new ClockSync();
  lopsided.add(probe(0, 10, 50, 500));
  const err = Math.abs(lopsided.offset - 500);
  assert.ok(err <= lopsided.errorBound + 1e-9, `${err} > ${lopsided.errorBound}`);
});

test('clock: the window slides', () => {
  const clock = new ClockSync();
  clock.add(probe(0, 1, 1, 0));
  for (let i = 0; i < WINDOW; i++) clock.add(probe(100 + i, 50, 50, 7));
  assert.equal(clock.samples.length, WINDOW);
  near(clock.offset, 7, 'old best fell out');
  assert.equal(WINDOW, 16);
});

test('clock: the prober matches replies to its probes and estimates serverNow', async () => {
  let local = 1_000;
  const sent = [];
  const prober = new ClockProber({ send: (t0) => { sent.push(t0); return true; }, now: () => local });
  prober.start();
  await new Promise((r) => setTimeout(r, 10));
  prober.stop();
  assert.equal(sent.length, 1, 'the burst starts at once');
  // The server is 5000 ms ahead; 2 ms each way.
  const t0 = sent[0];
  local = t0 + 4;
  assert.equal(prober.handleReply({ t0, t1: t0 + 2 + 5000, t2: t0 + 2 + 5000 }), false, 'stopped: forgotten');
  prober.outstanding.add(t0);
  assert.equal(prober.handleReply({ t0, t1: t0 + 2 + 5000, t2: t0 + 2 + 5000 }), true);
  assert.equal(prober.handleReply({ t0, t1: 0, t2: 0 }), false, 'a duplicate reply is ignored');
  near(prober.offset, 5000, 'offset');
  near(prober.rtt, 4, 'rtt');
  near(prober.serverNow(), local + 5000, 'serverNow');
  assert.equal(JOIN_BURST, 8);
});

test('clock: a burst of 8 probes 50 ms apart on start, then one every 3 s (virtual time)', () => {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
  try {
    let local = 0;
    const sent = [];
    const prober = new ClockProber({ send: (t0) => { sent.push(t0); return true; }, now: () => local });
    const advance = (ms) => {
      for (let i = 0; i < ms; i++) {
        local++;
        mock.timers.tick(1);
      }
    };
    prober.start();
    mock.timers.tick(0);
    advance((JOIN_BURST - 1) * BURST_SPACING_MS);
    assert.equal(sent.length, JOIN_BURST, `burst: ${sent}`);
    assert.deepEqual(sent.slice(0, 3), [0, 50, 100]);
    advance(PROBE_INTERVAL_MS - 1);
    assert.equal(sent.length, JOIN_BURST, 'nothing between the burst and the first steady probe');
    advance(1);
    assert.equal(sent.length, JOIN_BURST + 1);
    advance(2 * PROBE_INTERVAL_MS);
    assert.equal(sent.length, JOIN_BURST + 3);
    prober.stop();
    advance(10 * PROBE_INTERVAL_MS);
    assert.equal(sent.length, JOIN_BURST + 3, 'stopped');
    assert.equal(BURST_SPACING_MS, 50);
    assert.equal(PROBE_INTERVAL_MS, 3_000);
  } finally {
    mock.timers.reset();
  }
});

// ---- drift.js -------------------------------------------------------------------------------

test('drift: positionAt follows the tuple like Rust Timeline::position_at', () => {
  const paused = { url: '/a.webm', positionMs: 2_000, anchor: 4_000, rate: 1, paused: true };
  assert.equal(positionAt(paused, 10_000), 2_000, 'paused holds');
  const playing = { url: '/a.webm', positionMs: 0, anchor: 2_000, rate: 1, paused: false };
  assert.equal(positionAt(playing, 1_500), 0, 'scheduled ahead: holds until the anchor');
  assert.equal(positionAt(playing, 3_500), 1_500);
  const fast = { url: '/a.webm', positionMs: 60_000, anchor: 6_000, rate: 1.5, paused: false };
  assert.equal(positionAt(fast, 8_000), 63_000);
});

test('drift: within the dead band the rate is the timeline rate', () => {
  for (const error of [0, 10, -25, DEAD_BAND_MS, -DEAD_BAND_MS]) {
    const step = correct({ expectedMs: 10_000, actualMs: 10_000 + error, rate: 1.25 });
    assert.equal(step.action, 'none', `error ${error}`);
    assert.equal(step.playbackRate, 1.25);
    assert.equal(step.correcting, false);
    assert.equal(step.errorMs, error);
  }
});

test('drift: nudges are proportional, toward the timeline, and capped at ±5 %', () => {
  const behind = correct({ expectedMs: 10_000, actualMs: 10_000 - 60, rate: 1 });
  assert.equal(behind.action, 'nudge');
  assert.ok(behind.playbackRate > 1 && behind.playbackRate < 1 + MAX_NUDGE, `behind: ${behind.playbackRate}`);
  const ahead = correct({ expectedMs: 10_000, actualMs: 10_000 + 60, rate: 1 });
  assert.ok(ahead.playbackRate < 1 && ahead.playbackRate > 1 - MAX_NUDGE, `ahead: ${ahead.playbackRate}`);
  near(ahead.playbackRate - 1, -(behind.playbackRate - 1), 'symmetric');
  const more = correct({ expectedMs: 10_000, actualMs: 10_000 - 80, rate: 1 });
  assert.ok(more.playbackRate > behind.playbackRate, 'a larger error nudges harder');
  for (const error of [-1_400, -500, 500, 1_400]) {
    const step = correct({ expectedMs: 10_000, actualMs: 10_000 + error, rate: 2 });
    assert.equal(step.action, 'nudge');
    near(step.playbackRate, 2 * (1 - Math.sign(error) * MAX_NUDGE), `capped at error ${error}`);
  }
});

test('drift: a started correction continues into the dead band until settled', () => {
  const step = correct({ expectedMs: 0, actualMs: 30, rate: 1, correcting: true });
  assert.equal(step.action, 'nudge');
  assert.ok(step.playbackRate < 1);
  const settled = correct({ expectedMs: 0, actualMs: SETTLE_MS / 2, rate: 1, correcting: true });
  assert.equal(settled.action, 'none');
  assert.equal(settled.playbackRate, 1);
});

test('drift: beyond 1.5 s it seeks, ahead by the seek latency', () => {
  const step = correct({ expectedMs: 20_000, actualMs: 20_000 - SEEK_THRESHOLD_MS - 1, rate: 1, seekLatencyMs: 120 });
  assert.equal(step.action, 'seek');
  assert.equal(step.seekToMs, 20_120);
  assert.equal(step.playbackRate, 1);
  const fast = correct({ expectedMs: 20_000, actualMs: 30_000, rate: 1.5, seekLatencyMs: 100 });
  assert.equal(fast.action, 'seek');
  assert.equal(fast.seekToMs, 20_150, 'the media advances at the rate while seeking');
  assert.equal(correct({ expectedMs: 0, actualMs: SEEK_THRESHOLD_MS, rate: 1 }).action, 'nudge', '1.5 s exactly nudges');
});

test('drift: the seek latency is an EWMA that replaces its prior', () => {
  const e = new Ewma(0.5, 50);
  assert.equal(e.value, 50);
  assert.equal(e.update(100), 100, 'the first measurement replaces the prior');
  assert.equal(e.update(200), 150);
  assert.equal(e.update(Number.NaN), 150, 'non-numbers are ignored');
});

test('drift: which scheduled changes continue playback', () => {
  const playing = { url: '/a', positionMs: 1_000, anchor: 0, rate: 1, paused: false };
  const pause = { url: '/a', positionMs: 3_000, anchor: 2_000, rate: 1, paused: true };
  assert.ok(continuesPlayback(playing, pause), 'a pause at the position reached then');
  const rate = { ...pause, paused: false, rate: 2 };
  assert.ok(continuesPlayback(playing, rate), 'a rate change');
  const seek = { url: '/a', positionMs: 20_000, anchor: 2_000, rate: 1, paused: false };
  assert.ok(!continuesPlayback(playing, seek), 'a seek jumps');
  assert.ok(!continuesPlayback({ ...playing, paused: true }, { ...pause, paused: false }), 'play from pause');
  assert.ok(!continuesPlayback(playing, { ...pause, url: '/b' }), 'another video');
  assert.ok(!continuesPlayback(null, pause));
});
