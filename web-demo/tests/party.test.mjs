// End-to-end watch-party test: two real Chromium windows join one party on a real `marquee`,
// one loads the sample clip and plays, and both must show the same frame at the same time.
//
//   cd web-demo && npm install && npm test        (server and browser: see harness.mjs)
//
// Sync is measured the way a person would notice it: both pages' `video.currentTime`, each
// read with its page's wall clock (`performance.timeOrigin + performance.now()`), brought to
// one instant (while playing, the later reading is moved back by the elapsed time × rate).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  RESULTS_DIR, assertNoPageErrors, launchBrowser, openPage, serverFromEnv,
  runWithDiagnostics,
} from './harness.mjs';

/** The largest accepted difference between the two players, in ms. */
const MAX_DIFF_MS = 100;
/** Readings per phase, and their spacing. */
const READINGS = 5;
const READING_SPACING_MS = 500;
/** Time given to the players to converge after a change before measuring. */
const SETTLE_MS = 2_500;
/** Bounds: every wait in this file is one of these. */
const JOIN_MS = 15_000;
const MEDIA_READY_MS = 20_000;
const STATE_MS = 10_000;
const CHAT_MS = 10_000;
const RESUME_MS = 20_000;
const CAMERA_MS = 20_000;

let server;
let browser;
const pages = [];

before(async () => {
  server = await serverFromEnv();
  browser = await launchBrowser();
}, { timeout: 65_000 });

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

test('two members watch in sync: play, pause, seek; chat arrives once, also across a reconnect', { timeout: 150_000 }, async () => {
  await withDiagnostics(async () => {
    // One context per person: separate windows (a background tab is not rendered) and
    // separate sessionStorage (two members).
    const contexts = [];
    const newContext = async () => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      contexts.push(context);
      return context;
    };

    const a = await openPage(await newContext(), 'A', `${server.url}/party.html`, pages);
    await a.fill('#start-name', 'Ann');
    await a.click('#create');
    const code = await (await a.waitForFunction(() => window.marquee.state.joined && window.marquee.state.party,
      null, { timeout: JOIN_MS })).jsonValue();
    assert.match(code, /^[A-Z0-9]+$/, 'party code');
    assert.equal(await a.textContent('#party-code'), code);
    const link = `${server.url}/party.html?party=${code}`;
    assert.equal(await a.inputValue('#share-link'), link);
    assert.equal(await a.getAttribute('#qr', 'src'), `/qr.svg?text=${encodeURIComponent(link)}`);
    console.log(`party ${code}`);

    const b = await openPage(await newContext(), 'B', link, pages);
    await b.waitForFunction(() => window.marquee.state.joined, null, { timeout: JOIN_MS });
    await a.waitForFunction(() => window.marquee.state.members.length === 2, null, { timeout: STATE_MS });

    // Load (A's URL field is prefilled with the sample clip) and wait for both players.
    assert.equal(await a.inputValue('#url'), '/media/sample.webm');
    await a.click('#load');
    for (const p of [a, b]) {
      await p.waitForFunction(() => {
        const v = document.querySelector('#video');
        return v.readyState >= 2 && Math.abs(v.duration - 40) < 1;
      }, null, { timeout: MEDIA_READY_MS });
    }

    // Play.
    await a.click('#play');
    await waitAll([a, b], () => !document.querySelector('#video').paused
      && document.querySelector('#video').currentTime > 0.3, MEDIA_READY_MS);
    await sleep(SETTLE_MS);
    await assertInSync([a, b], 'playing from 0 s', { playing: true });

    // Pause: both stop on the same frame.
    await a.click('#play');
    await waitAll([a, b], () => {
      const v = document.querySelector('#video');
      return window.marquee.state.shared?.timeline.paused && v.paused && !v.seeking;
    }, STATE_MS);
    await sleep(300);
    await assertInSync([a, b], 'paused', { playing: false });

    // Seek to 20 s (the seek bar, as a person drags it), then play.
    await a.evaluate(() => {
      const seek = document.querySelector('#seek');
      seek.value = '20000';
      seek.dispatchEvent(new Event('input', { bubbles: true }));
      seek.dispatchEvent(new Event('change', { bubbles: true }));
    });
    await waitAll([a, b], () => window.marquee.state.shared?.timeline.positionMs === 20_000
      && Math.abs(document.querySelector('#video').currentTime - 20) < 0.01, STATE_MS);
    await a.click('#play');
    await waitAll([a, b], () => !document.querySelector('#video').paused
      && document.querySelector('#video').currentTime > 20.3, MEDIA_READY_MS);
    await sleep(SETTLE_MS);
    await assertInSync([a, b], 'playing from 20 s', { playing: true });

    // Chat: A's message appears on B, exactly once.
    await a.fill('#chat-input', 'hello from Ann');
    await a.press('#chat-input', 'Enter');
    await b.waitForFunction(() => [...document.querySelectorAll('#chat-log .msg-chat')]
      .some((li) => li.textContent.includes('hello from Ann')), null, { timeout: CHAT_MS });
    await sleep(500);
    assert.equal(await countChat(b, 'hello from Ann'), 1, 'B shows the message once');
    assert.equal(await countChat(a, 'hello from Ann'), 1, 'A shows its own message once');

    // Typing indicator (on while typing, off when the field empties) and a reaction.
    await a.fill('#chat-input', 'typing somethi');
    await b.waitForFunction(() => document.querySelector('#typing').textContent.includes('Ann is typing'),
      null, { timeout: STATE_MS });
    await a.fill('#chat-input', '');
    await b.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: STATE_MS });
    await a.click('[data-emoji="🎉"]');
    await b.waitForFunction(() => [...document.querySelectorAll('#chat-log .msg-reaction')]
      .some((li) => li.textContent.includes('Ann') && li.textContent.includes('🎉')), null, { timeout: CHAT_MS });

    // B's connection drops; A chats meanwhile; B resumes as the same member and gets the
    // missed message exactly once.
    const bMember = await b.evaluate(() => window.marquee.state.memberId);
    await b.evaluate(() => window.marquee.signaling.restart(1_500));
    await a.fill('#chat-input', 'while you were away');
    await a.press('#chat-input', 'Enter');
    await b.waitForFunction(() => window.marquee.state.joins === 2 && window.marquee.state.joined,
      null, { timeout: RESUME_MS });
    await b.waitForFunction(() => [...document.querySelectorAll('#chat-log .msg-chat')]
      .some((li) => li.textContent.includes('while you were away')), null, { timeout: CHAT_MS });
    const resumed = await b.evaluate(() => ({ id: window.marquee.state.memberId, resumes: window.marquee.state.resumes }));
    assert.equal(resumed.id, bMember, 'B resumed as the same member');
    assert.equal(resumed.resumes, 1, 'the server recognized the resume');
    await sleep(500);
    assert.equal(await countChat(b, 'while you were away'), 1, 'the missed message once');
    assert.equal(await countChat(b, 'hello from Ann'), 1, 'the earlier message still once');

    // A reload of B (same tab: same sessionStorage) restores the log, still once each.
    await b.reload({ timeout: JOIN_MS });
    await b.waitForFunction(() => window.marquee.state.joined, null, { timeout: JOIN_MS });
    await sleep(500);
    assert.equal(await countChat(b, 'hello from Ann'), 1, 'after reload: once');
    assert.equal(await countChat(b, 'while you were away'), 1, 'after reload: once');
    assert.equal(await b.evaluate(() => window.marquee.state.memberId), bMember, 'after reload: same member');
    await waitAll([b], () => !document.querySelector('#video').paused
      && document.querySelector('#video').currentTime > 21, MEDIA_READY_MS);
    await sleep(SETTLE_MS);
    await assertInSync([a, b], 'after B reloaded', { playing: true });

    // Host only: B's playback controls are disabled, A's are not; only A sees the toggle.
    await a.click('#control-host');
    await b.waitForFunction(() => window.marquee.state.shared?.control === 'host'
      && document.querySelector('#play').disabled && !document.querySelector('#control-note').hidden,
    null, { timeout: STATE_MS });
    assert.ok(await a.isEnabled('#play'), 'the host still controls playback');
    assert.ok(await b.isHidden('#control-mode'), 'only the host sees who-controls');
    assert.ok(await a.isVisible('#control-mode'), 'the host sees who-controls');

    const activity = await a.evaluate(() => window.marquee.log.filter((e) => e.kind === 'activity').map((e) => `#${e.seq} ${e.text}`));
    console.log(`A's activity log:\n  ${activity.join('\n  ')}`);
    const spread = await a.evaluate(() => window.marquee.state.spread);
    console.log(`party spread: ${JSON.stringify(spread)}`);
    await mkdir(RESULTS_DIR, { recursive: true });
    await a.screenshot({ path: path.join(RESULTS_DIR, 'party-a.png'), fullPage: true });
    await b.screenshot({ path: path.join(RESULTS_DIR, 'party-b.png'), fullPage: true });
    assert.equal(await a.evaluate(() => window.marquee.state.joins), 1, 'A never had to reconnect');
    assertNoPageErrors(pages);
    await Promise.all(contexts.map((c) => c.close()));
  });
});

test('TV layout: big code and a QR code of the join link; arrow keys reach the controls', { timeout: 60_000 }, async () => {
  await withDiagnostics(async () => {
    const context = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
    const tv = await openPage(context, 'tv', `${server.url}/party.html?tv=1`, pages);
    assert.ok(await tv.evaluate(() => document.documentElement.classList.contains('tv')), 'TV mode from ?tv=1');
    await tv.click('#create');
    const code = await (await tv.waitForFunction(() => window.marquee.state.joined && window.marquee.state.party,
      null, { timeout: JOIN_MS })).jsonValue();
    const link = `${server.url}/party.html?party=${code}`;
    await tv.waitForFunction(() => {
      const img = document.querySelector('#qr');
      return img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width >= 200;
    }, null, { timeout: STATE_MS });
    assert.equal(await tv.getAttribute('#qr', 'src'), `/qr.svg?text=${encodeURIComponent(link)}`);
    const svg = await (await fetch(`${server.url}/qr.svg?text=${encodeURIComponent(link)}`)).text();
    assert.match(svg, /<svg/, 'the server renders the join link as SVG');
    assert.equal(await tv.textContent('#party-code'), code);

    // A remote: arrows move focus between controls, Enter presses.
    await tv.focus('#url');
    await tv.keyboard.press('End');
    await tv.keyboard.press('ArrowRight'); // the caret at the end: leaves the field
    assert.equal(await tv.evaluate(() => document.activeElement.id), 'load');
    await tv.keyboard.press('Enter');
    await tv.waitForFunction(() => window.marquee.state.shared?.timeline.url === '/media/sample.webm',
      null, { timeout: STATE_MS });
    await mkdir(RESULTS_DIR, { recursive: true });
    await tv.screenshot({ path: path.join(RESULTS_DIR, 'party-tv.png'), fullPage: true });
    assertNoPageErrors(pages);
    await context.close();
  });
});

test('cameras: a member turns its camera on; the other sees and hears it through the SFU', { timeout: 90_000 }, async () => {
  await withDiagnostics(async () => {
    const contexts = [];
    const newContext = async () => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: server.url });
      contexts.push(context);
      return context;
    };
    const a = await openPage(await newContext(), 'camA', `${server.url}/party.html`, pages);
    await a.click('#create');
    const code = await (await a.waitForFunction(() => window.marquee.state.joined && window.marquee.state.party,
      null, { timeout: JOIN_MS })).jsonValue();
    const b = await openPage(await newContext(), 'camB', `${server.url}/party.html?party=${code}`, pages);
    await b.waitForFunction(() => window.marquee.state.joined, null, { timeout: JOIN_MS });

    await a.click('#camera');
    await a.waitForFunction(() => window.marquee.cameras.own?.publisher.state === 'connected', null, { timeout: CAMERA_MS });
    await b.waitForFunction(() => window.marquee.state.members.some((m) => m.camera), null, { timeout: STATE_MS });
    await b.waitForFunction(() => {
      const v = document.querySelector('#cameras .camera-tile video');
      return v && v.videoWidth > 0 && !v.paused;
    }, null, { timeout: CAMERA_MS });
    const frames = await b.evaluate(() => new Promise((resolve) => {
      const v = document.querySelector('#cameras .camera-tile video');
      let n = 0;
      const tick = () => { n++; v.requestVideoFrameCallback(tick); };
      v.requestVideoFrameCallback(tick);
      setTimeout(() => resolve(n), 2_000);
    }));
    const audio = await b.evaluate(() => document.querySelector('#cameras .camera-tile video').srcObject
      .getAudioTracks().length);
    console.log(`camera tile on B: ${frames} frames in 2 s, ${audio} audio track(s)`);
    assert.ok(frames > 10, `B's camera tile presents moving video (${frames} frames in 2 s)`);
    assert.equal(audio, 1, 'the microphone comes along');
    await mkdir(RESULTS_DIR, { recursive: true });
    await b.screenshot({ path: path.join(RESULTS_DIR, 'party-camera.png'), fullPage: true });

    // Off again: B's tile goes.
    await a.click('#camera');
    await b.waitForFunction(() => !document.querySelector('#cameras .camera-tile'), null, { timeout: STATE_MS });
    assertNoPageErrors(pages);
    await Promise.all(contexts.map((c) => c.close()));
  });
});

// ---- Measuring -------------------------------------------------------------------------

/** One reading per page, taken concurrently. */
async function read(list) {
  return Promise.all(list.map((p) => p.evaluate(() => {
    const v = document.querySelector('#video');
    const wall = performance.timeOrigin + performance.now();
    const posMs = v.currentTime * 1000;
    const { player, state } = window.marquee;
    return {
      name: '', posMs, wall, paused: v.paused, rate: state.shared?.timeline.rate ?? 1,
      playbackRate: v.playbackRate, errorMs: player.last.errorMs,
      startLateMs: player.last.startLateMs, startLeadMs: player.startLatency.value, seekLatencyMs: player.seekLatency.value,
      counts: player.counts,
    };
  }).then((r) => ({ ...r, name: p.marqueeName }))));
}

async function assertInSync([a, b], phase, { playing }) {
  const diffs = [];
  for (let i = 0; i < READINGS; i++) {
    const [ra, rb] = await read([a, b]);
    // Bring B's reading to A's instant: while playing, B advanced (tB − tA) × rate since.
    const elapsed = rb.wall - ra.wall;
    const bAtA = playing ? rb.posMs - elapsed * rb.rate : rb.posMs;
    const diff = bAtA - ra.posMs;
    diffs.push(diff);
    console.log(`${phase} #${i + 1}: A ${ra.posMs.toFixed(1)} ms (rate ${ra.playbackRate.toFixed(3)}, own error ${fmt(ra.errorMs)}),`
      + ` B ${rb.posMs.toFixed(1)} ms read ${elapsed.toFixed(1)} ms later (rate ${rb.playbackRate.toFixed(3)}, own error ${fmt(rb.errorMs)})`
      + ` → B − A = ${diff.toFixed(1)} ms`);
    assert.equal(ra.paused, !playing, `${phase}: A paused=${ra.paused}`);
    assert.equal(rb.paused, !playing, `${phase}: B paused=${rb.paused}`);
    if (i + 1 < READINGS) await sleep(READING_SPACING_MS);
  }
  const starts = await read([a, b]);
  console.log(`${phase}: ${starts.map((r) => `${r.name} started ${fmt(r.startLateMs)} late (lead now ${fmt(r.startLeadMs)}),`
    + ` seek latency ${fmt(r.seekLatencyMs)}, ${JSON.stringify(r.counts)}`).join('; ')}`);
  const worst = Math.max(...diffs.map(Math.abs));
  assert.ok(worst < MAX_DIFF_MS, `${phase}: players ${worst.toFixed(1)} ms apart (limit ${MAX_DIFF_MS} ms): ${diffs.map((d) => d.toFixed(1)).join(', ')}`);
}

function fmt(ms) {
  return ms === null || ms === undefined ? '-' : `${ms.toFixed(1)} ms`;
}

async function countChat(page, text) {
  return page.evaluate((text) => [...document.querySelectorAll('#chat-log .msg-chat')]
    .filter((li) => li.textContent.includes(text)).length, text);
}

async function waitAll(list, fn, timeout) {
  await Promise.all(list.map((p) => p.waitForFunction(fn, null, { timeout })));
}

// ---- Diagnostics -----------------------------------------------------------------------------

function withDiagnostics(body) {
  return runWithDiagnostics(pages, body, {
    pageState: async (page) => {
      return await page.evaluate(() => {
        const m = window.marquee;
        const v = document.querySelector('#video');
        return JSON.stringify({
          state: { ...m.state, members: m.state.members.map((x) => `${x.name}:${x.status}:${x.deviationMs}`) },
          video: v && {
            src: v.currentSrc, currentTime: v.currentTime, paused: v.paused, seeking: v.seeking,
            readyState: v.readyState, playbackRate: v.playbackRate, error: v.error?.message,
          },
          player: {
            status: m.player.status, last: m.player.last, counts: m.player.counts,
            seekLatency: m.player.seekLatency.value, current: m.player.current, next: m.player.next,
          },
          clock: { offset: m.clock.offset, rtt: m.clock.rtt, samples: m.clock.sync.samples.length },
          chat: [...document.querySelectorAll('#chat-log .msg')].map((li) => li.textContent).slice(-20),
        });
      });
    },
    onFailedPage: async (page) => {
      await mkdir(RESULTS_DIR, { recursive: true });
      await page.screenshot({ path: path.join(RESULTS_DIR, `party-failure-${page.marqueeName}.png`), timeout: 5_000 });
    },
    extra: () => [
      `--- server log (last lines)\n${server?.log().slice(-60).join('\n') ?? ''}`,
    ],
  });
}
