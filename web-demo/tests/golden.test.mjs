// The golden vectors shared with the Rust side:
//   node --test web-demo/tests/golden.test.mjs
// sync/tests/golden/sync-vectors.json holds inputs and expected outputs of the logic that exists
// in both languages: js/clock.js ↔ `sync::ClockSync`, js/drift.js ↔ `sync::drift` and
// `Timeline::position_at`. sync/tests/golden.rs checks the same file against the Rust code, so
// neither side can change a rule without the other's test failing. The file's `_about` says how
// to read it (exact numbers unless a field is listed as approximate; "NaN"/"Infinity" strings).
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ClockSync, JOIN_BURST, WINDOW, sampleDelay, sampleOffset } from '../js/clock.js';
import * as drift from '../js/drift.js';

const golden = JSON.parse(readFileSync(new URL('../../sync/tests/golden/sync-vectors.json', import.meta.url), 'utf8'));
const { tolerance } = golden;

/** An input number: a JSON number, or one of the strings that stand for non-finite numbers. */
function input(x) {
  if (typeof x === 'number') return x;
  const special = { NaN: Number.NaN, Infinity: Number.POSITIVE_INFINITY, '-Infinity': Number.NEGATIVE_INFINITY };
  assert.ok(Object.hasOwn(special, x), `not a number: ${JSON.stringify(x)}`);
  return special[x];
}

const sample = (s) => ({ t0: input(s.t0), t1: input(s.t1), t2: input(s.t2), t3: input(s.t3) });

/**
 * Compares a number (or null: no estimate) exactly, or within the file's tolerance when the
 * field is listed in the section's `approximate`.
 */
function expectNumber(actual, expected, what, approximate = false) {
  if (expected === null) {
    assert.equal(actual, null, `${what}: expected null (no estimate), got ${actual}`);
    return;
  }
  assert.equal(typeof actual, 'number', `${what}: expected ${expected}, got ${actual}`);
  if (approximate) {
    assert.ok(Math.abs(actual - expected) <= tolerance, `${what}: ${actual} is not within ${tolerance} of ${expected}`);
  } else {
    assert.ok(actual === expected, `${what}: ${actual} !== ${expected} (exact)`);
  }
}

const SECTIONS = ['_about', 'tolerance', 'constants', 'probeSamples', 'clockSync', 'timeline', 'correct', 'continuesPlayback', 'ewma'];

test('golden: the file has only the sections this test checks, each with vectors', () => {
  assert.deepEqual(Object.keys(golden).sort(), [...SECTIONS].sort(), 'a new section needs a check here and in sync/tests/golden.rs');
  assert.ok(tolerance > 0 && tolerance < 1e-6, `tolerance ${tolerance}`);
  for (const name of SECTIONS.filter((s) => golden[s]?.vectors !== undefined)) {
    assert.ok(golden[name].vectors.length > 0, `${name} has no vectors`);
  }
});

test('golden: constants', () => {
  const { approximate, clock, drift: driftConstants } = golden.constants;
  const approx = (name) => approximate.includes(name);
  assert.deepEqual(Object.keys(clock).sort(), ['JOIN_BURST', 'WINDOW']);
  expectNumber(WINDOW, clock.WINDOW, 'WINDOW');
  expectNumber(JOIN_BURST, clock.JOIN_BURST, 'JOIN_BURST');
  for (const [name, value] of Object.entries(driftConstants)) {
    assert.ok(Object.hasOwn(drift, name), `drift.js exports no ${name}`);
    expectNumber(drift[name], value, name, approx(name));
  }
});

for (const v of golden.probeSamples.vectors) {
  test(`golden: probe sample: ${v.name}`, () => {
    const s = sample(v.sample);
    expectNumber(sampleOffset(s), v.offset, 'offset');
    expectNumber(sampleDelay(s), v.delay, 'delay');
  });
}

for (const v of golden.clockSync.vectors) {
  test(`golden: ClockSync: ${v.name}`, () => {
    const clock = new ClockSync();
    const checks = [...v.checks];
    const verify = (added) => {
      while (checks.length > 0 && checks[0].after === added) {
        const c = checks.shift();
        const at = `after ${added} samples`;
        assert.equal(clock.samples.length, c.len, `${at}: len`);
        assert.equal(clock.ready, c.len > 0, `${at}: ready`);
        expectNumber(clock.offset, c.offset, `${at}: offset`);
        expectNumber(clock.errorBound, c.errorBound, `${at}: errorBound`);
        expectNumber(clock.rtt, c.rtt, `${at}: rtt`);
        for (const { clientMs, serverMs } of c.serverTime) {
          expectNumber(clock.serverTime(clientMs), serverMs, `${at}: serverTime(${clientMs})`);
        }
      }
    };
    verify(0);
    v.samples.forEach((s, i) => {
      clock.add(sample(s));
      verify(i + 1);
    });
    assert.equal(checks.length, 0, `checks after more samples than the vector has: ${JSON.stringify(checks)}`);
  });
}

for (const v of golden.timeline.vectors) {
  test(`golden: positionAt: ${v.name}`, () => {
    for (const { serverMs, positionMs } of v.positions) {
      expectNumber(drift.positionAt(v.timeline, serverMs), positionMs, `positionAt(${serverMs})`);
    }
  });
}

for (const v of golden.correct.vectors) {
  test(`golden: correct: ${v.name}`, () => {
    const approx = (field) => golden.correct.approximate.includes(field);
    const step = drift.correct(v.input);
    assert.deepEqual(Object.keys(step).sort(), Object.keys(v.expect).sort(), 'fields of a step');
    assert.equal(step.action, v.expect.action, 'action');
    assert.equal(step.correcting, v.expect.correcting, 'correcting');
    for (const field of ['errorMs', 'playbackRate', 'seekToMs']) {
      expectNumber(step[field], v.expect[field], field, approx(field));
    }
  });
}

for (const v of golden.continuesPlayback.vectors) {
  test(`golden: continuesPlayback: ${v.name}`, () => {
    // As on the wire: a timeline without media has no `url` (Rust `None`).
    assert.equal(drift.continuesPlayback(v.current, v.next), v.continues);
  });
}

for (const v of golden.ewma.vectors) {
  test(`golden: Ewma: ${v.name}`, () => {
    const approx = golden.ewma.approximate.includes('value');
    const e = new drift.Ewma(v.alpha, v.initial);
    expectNumber(e.value, v.initial, 'initial value');
    for (const [i, u] of v.updates.entries()) {
      const returned = e.update(input(u.x));
      expectNumber(returned, u.value, `update #${i + 1} (${u.x}) returns`, approx);
      expectNumber(e.value, u.value, `update #${i + 1} (${u.x}) value`, approx);
      assert.equal(e.count, u.count, `update #${i + 1} (${u.x}) count`);
    }
  });
}
