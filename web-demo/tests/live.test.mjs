// End-to-end browser test: a real Chromium publishes its (fake) camera through a real
// `marquee` server to two real Chromium viewers, and we check what a person would see.
//
//   cd web-demo && npm install && npm test
//
// Server and browser come from harness.mjs (MARQUEE_BIN, MARQUEE_URL, CHROMIUM_BIN).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  RESULTS_DIR, assertNoPageErrors as assertNoErrorsIn, countVideoFrames, launchBrowser, openPage as openRecordedPage, serverFromEnv,
  runWithDiagnostics,
} from './harness.mjs';

/** Bounds: every wait in this file is one of these, so a hang fails fast and says where. */
const ROOM_CODE_MS = 15_000;
const MEDIA_CONNECTED_MS = 20_000;
const FIRST_FRAME_MS = 20_000;
const VIEWER_COUNT_MS = 10_000;
const FRAME_WINDOW_MS = 2_000;
const MIN_FRAMES_IN_WINDOW = 10;
const AUDIO_WINDOW_MS = 1_500;
/**
 * Video must still be moving this long after the host went live: long enough for the host's
 * bandwidth estimate to ramp up and its encoder to change resolution (about 4-6 s in), which
 * a forwarder has to survive without freezing its viewers.
 */
const SUSTAINED_MS = 15_000;

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

test('host goes live with the camera; two viewers see moving video and hear audio', { timeout: 90_000 }, async () => {
  await withDiagnostics(async () => {
    // One context (its own window) per person: a page in a background tab of a shared
    // window is not rendered, so its video would present no frames.
    const newContext = async () => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: server.url });
      contexts.push(context);
      return context;
    };
    const contexts = [];

    const host = await openPage(await newContext(), 'host', `${server.url}/host.html`);
    await host.click('#start');
    const code = await (await host.waitForFunction(
      () => document.querySelector('#room-code')?.textContent.trim() || null,
      null, { timeout: ROOM_CODE_MS },
    )).jsonValue();
    assert.match(code, /^\S+$/, 'room code shown on the host page');
    const shareLink = await host.inputValue('#share-link');
    assert.equal(shareLink, `${server.url}/watch.html?room=${encodeURIComponent(code)}`);
    await host.waitForFunction(() => window.marquee.pc?.connectionState === 'connected',
      null, { timeout: MEDIA_CONNECTED_MS });
    const liveAt = Date.now();

    const viewers = await Promise.all([1, 2].map(async (i) =>
      openPage(await newContext(), `viewer${i}`, `${server.url}/watch.html?room=${encodeURIComponent(code)}`)));

    for (const viewer of viewers) {
      await viewer.waitForFunction(() => document.querySelector('#video').videoWidth > 0,
        null, { timeout: FIRST_FRAME_MS });
    }
    await assertWatching(viewers, 'after joining');

    await host.waitForFunction(() => document.querySelector('#viewer-count').textContent.trim() === '2',
      null, { timeout: VIEWER_COUNT_MS });

    // A person keeps watching: the picture must not freeze once the stream settles.
    await sleep(Math.max(0, liveAt + SUSTAINED_MS - Date.now()));
    await assertWatching(viewers, `${SUSTAINED_MS / 1000} s after going live`);

    // The SFU's forwarding fast path: both viewers' media takes it (their keys reproduced
    // rtc's output). Viewers are sealed with AES-128-GCM: Chrome lists AES-CM-HMAC-SHA1-80
    // first and rtc's DTLS server honours the client's order, so the SFU offers viewers GCM
    // only (media.viewer_srtp_profiles); the host may be on either. Every SSRC a viewer
    // receives has had sender reports, which the SFU writes itself since forwarded media
    // bypasses rtc's report interceptor.
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /^marquee_fast_path_viewers(\{[^}]*\})? 2$/m, 'both viewers on the fast path');
    assert.match(metrics, /^marquee_rtc_path_viewers(\{[^}]*\})? 0$/m);
    for (const page of [host, ...viewers]) {
      const ciphers = await page.evaluate(async () => {
        const stats = await window.marquee.pc.getStats();
        return [...stats.values()].filter((s) => s.type === 'transport').map((s) => s.srtpCipher);
      });
      // Chrome reports the IANA names (older versions drop the SRTP_ prefix of GCM).
      const gcm = ['SRTP_AEAD_AES_128_GCM', 'AEAD_AES_128_GCM'];
      const expected = page === host ? [...gcm, 'SRTP_AES128_CM_HMAC_SHA1_80'] : gcm;
      assert.ok(ciphers.length > 0 && ciphers.every((c) => expected.includes(c)),
        `${page.marqueeName}: srtpCipher ${JSON.stringify(ciphers)}`);
    }
    for (const viewer of viewers) {
      const reports = await viewer.evaluate(async () => {
        const stats = await window.marquee.pc.getStats();
        return [...stats.values()].filter((s) => s.type === 'inbound-rtp').map((s) => ({
          kind: s.kind,
          ssrc: s.ssrc,
          reportsSent: stats.get(s.remoteId)?.reportsSent ?? 0,
        }));
      });
      assert.deepEqual(reports.map((r) => r.kind).sort(), ['audio', 'video'], JSON.stringify(reports));
      for (const r of reports) {
        assert.ok(r.reportsSent > 0, `${viewer.marqueeName}: no sender report for ${JSON.stringify(r)}`);
      }
    }

    // Healthy media never needed a second session: reconnects would hide server bugs.
    for (const page of [host, ...viewers]) {
      const { joins, stalls } = await page.evaluate(() => window.marquee.state);
      assert.equal(joins, 1, `${page.marqueeName} joined ${joins} times (media stalls: ${stalls ?? 0})`);
    }

    await mkdir(RESULTS_DIR, { recursive: true });
    await viewers[0].screenshot({ path: path.join(RESULTS_DIR, 'viewer.png') });
    await host.screenshot({ path: path.join(RESULTS_DIR, 'host.png') });
    assertNoPageErrors();
    await Promise.all(contexts.map((c) => c.close()));
  });
});

test('landing page: keyboard focus moves with arrows, join-by-code opens the watch page', { timeout: 30_000 }, async () => {
  await withDiagnostics(async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await openPage(context, 'landing', `${server.url}/`);
    assert.equal(await page.textContent('h1'), 'Marquee');
    assert.equal(await page.getAttribute('#create', 'href'), 'host.html');

    // TV remote: arrows move focus between the two landing controls.
    await page.focus('#create');
    await page.keyboard.press('ArrowDown');
    assert.equal(await activeId(page), 'room-code', 'ArrowDown from "Create an event" focuses the code field');
    await page.keyboard.press('ArrowUp');
    assert.equal(await activeId(page), 'create', 'ArrowUp returns to "Create an event"');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.type(' AB12 ');
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/watch\.html\?room=AB12$/, { timeout: 10_000 });

    // The watch page runs and tells the person something (no server room: an error or a wait).
    await page.waitForFunction(() => !document.querySelector('#overlay').hidden
      && document.querySelector('#overlay').textContent.trim().length > 0, null, { timeout: 10_000 });
    assertNoPageErrors();
    await context.close();
  });
});

// ---- Pages and diagnostics -----------------------------------------------------------

function openPage(context, name, url) {
  return openRecordedPage(context, name, url, pages);
}

/** Every viewer shows a moving picture and receives audio, measured concurrently. */
async function assertWatching(viewers, when) {
  const checks = await Promise.all(viewers.map(async (viewer) => ({
    name: viewer.marqueeName,
    frames: await countVideoFrames(viewer, '#video', FRAME_WINDOW_MS),
    audio: await audioPacketsRise(viewer, AUDIO_WINDOW_MS),
    size: await viewer.evaluate(() => {
      const v = document.querySelector('#video');
      return `${v.videoWidth}x${v.videoHeight}`;
    }),
  })));
  for (const c of checks) {
    console.log(`${when}: ${c.name}: ${c.size}, ${c.frames} frames in ${FRAME_WINDOW_MS} ms, audio packets ${c.audio.before} -> ${c.audio.after}`);
  }
  for (const c of checks) {
    if (c.audio.before === null || c.audio.after === null) {
      const { joins, stalls, notice } = await viewers.find((v) => v.marqueeName === c.name)
        .evaluate(() => window.marquee.state);
      assert.fail(`${when}: ${c.name} lost its peer connection and had to rejoin`
        + ` (joins: ${joins}, media stalls detected: ${stalls}${notice ? `, showing "${notice}"` : ''})`);
    }
    assert.ok(c.frames > MIN_FRAMES_IN_WINDOW, `${when}: ${c.name}: only ${c.frames} frames in ${FRAME_WINDOW_MS} ms`);
    assert.ok(c.audio.after > c.audio.before,
      `${when}: ${c.name}: inbound audio packets not rising (${c.audio.before} -> ${c.audio.after})`);
  }
}

function assertNoPageErrors() {
  assertNoErrorsIn(pages);
}

/** Runs `body`; on failure appends page logs, page state and the server's log to the error. */
function withDiagnostics(body) {
  return runWithDiagnostics(pages, body, {
    pageState: async (page) => {
      return await page.evaluate(async () => {
        const pc = window.marquee?.pc;
        const rtp = [];
        if (pc) {
          const all = await pc.getStats();
          const selected = [...all.values()].find((s) => s.type === 'transport')?.selectedCandidatePairId;
          for (const s of all.values()) {
            if (s.type === 'candidate-pair' && (s.nominated || s.id === selected)) {
              const local = all.get(s.localCandidateId);
              const remote = all.get(s.remoteCandidateId);
              rtp.push(`ice pair ${local?.address}:${local?.port} -> ${remote?.address}:${remote?.port}`
                + `${s.id === selected ? ' (selected)' : ''} nominated=${s.nominated} ${s.state}`
                + ` packetsSent=${s.packetsSent} packetsReceived=${s.packetsReceived}`);
            }
            if (s.type !== 'inbound-rtp' && s.type !== 'outbound-rtp') continue;
            rtp.push(`${s.type} ${s.kind} ssrc=${s.ssrc} packets=${s.packetsReceived ?? s.packetsSent}`
              + ` frames=${s.framesDecoded ?? s.framesEncoded ?? '-'} ${s.frameWidth ?? ''}x${s.frameHeight ?? ''}`
              + ` pli=${s.pliCount ?? '-'} nack=${s.nackCount ?? '-'}`);
          }
        }
        return JSON.stringify({
          state: window.marquee?.state,
          pc: pc && {
            connectionState: pc.connectionState,
            iceConnectionState: pc.iceConnectionState,
            signalingState: pc.signalingState,
          },
          rtp,
        });
      });
    },
    extra: () => [
      `--- server log (last lines)\n${server?.log().slice(-60).join('\n') ?? ''}`,
    ],
  });
}

async function activeId(page) {
  return page.evaluate(() => document.activeElement?.id ?? null);
}

/** `packetsReceived` of the viewer's inbound audio RTP stream, read twice `ms` apart. */
async function audioPacketsRise(page, ms) {
  const read = () => page.evaluate(async () => {
    if (!window.marquee.pc) return null; // torn down: the page is reconnecting
    const stats = await window.marquee.pc.getStats();
    let packets = 0;
    for (const s of stats.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived ?? 0;
    }
    return packets;
  });
  const before = await read();
  await sleep(ms);
  return { before, after: await read() };
}
