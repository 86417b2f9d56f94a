// Media through a real TURN relay: Debian's coturn (`turnserver`) on loopback, marquee handing
// out coturn REST credentials (`--turn-url`, `--turn-secret`: username `expiry:identity`,
// password base64 HMAC-SHA1), and Chromium pages started with `?relay=1`
// (iceTransportPolicy "relay"), so the only way their media can flow is through coturn.
//
//   host.html?relay=1 --(relay)--> marquee --(relay)--> watch.html?relay=1
//                                  marquee --(relay)--> whep.html?relay=1 (TURN from OPTIONS Link)
//
// Asserts what a person sees (moving video) and that the selected ICE candidate pair of every
// page has a local candidate of type `relay`. Needs `coturn` and `chromium`. Environment:
// MARQUEE_BIN, CHROMIUM_BIN (harness.mjs), TURNSERVER_BIN (default /usr/bin/turnserver).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  RESULTS_DIR, assertNoPageErrors, countVideoFrames, freeUdpPort, launchBrowser, openPage, peerStats,
  spawnLogged, startServer, waitFor,
  runWithDiagnostics,
} from './harness.mjs';

const TURNSERVER = process.env.TURNSERVER_BIN ?? '/usr/bin/turnserver';

/** Bounds: every wait in this file is one of these. */
const TURN_READY_MS = 10_000;
const ROOM_CODE_MS = 15_000;
const MEDIA_CONNECTED_MS = 20_000;
const FIRST_FRAME_MS = 20_000;
const FRAME_WINDOW_MS = 2_000;
const MIN_FRAMES_IN_WINDOW = 10;
/** Relay ports handed out by coturn: a range of this size at a random offset, so parallel runs rarely meet. */
const RELAY_PORTS = 200;

let tmp;
let turn;
let turnPort;
let server;
let browser;
const turnSecret = randomBytes(24).toString('hex');
const pages = [];
const contexts = [];
/** The live room of the first test, watched again by the WHEP test. */
let liveRoom = null;

before(async () => {
  assert.ok(existsSync(TURNSERVER), `missing ${TURNSERVER}: apt-get install -y coturn`);
  tmp = await mkdtemp(path.join(os.tmpdir(), 'marquee-turn-'));
  turn = await startCoturn();
  server = await startServer({
    extraArgs: ['--turn-url', `turn:127.0.0.1:${turnPort}?transport=udp`, '--turn-secret', turnSecret],
  });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  await browser?.close().catch(() => {});
  await server?.stop();
  await turn?.stop(3_000);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('host and viewer with ?relay=1 send and receive their media through coturn', { timeout: 120_000 }, async () => {
  await withDiagnostics(async () => {
    const host = await openPage(await newContext(), 'host', `${server.url}/host.html?relay=1`, pages);
    await host.click('#start');
    const code = await (await host.waitForFunction(
      () => document.querySelector('#room-code')?.textContent.trim() || null, null, { timeout: ROOM_CODE_MS },
    )).jsonValue();
    liveRoom = code;
    await host.waitForFunction(() => window.marquee.pc?.connectionState === 'connected', null, { timeout: MEDIA_CONNECTED_MS });
    const hostServers = await host.evaluate(() => window.marquee.signaling.iceServers);
    assert.ok(hostServers.length > 0 && hostServers.some((s) => s.urls.some((u) => u.startsWith('turn:'))),
      `joined carried no TURN server: ${JSON.stringify(hostServers)}`);
    assert.match(hostServers[0].username ?? '', /^\d+:/, 'coturn REST username is "expiry:identity"');

    const viewer = await openPage(await newContext(), 'viewer',
      `${server.url}/watch.html?room=${encodeURIComponent(code)}&relay=1`, pages);
    await viewer.waitForFunction(() => document.querySelector('#video').videoWidth > 0, null, { timeout: FIRST_FRAME_MS });
    await assertMovingVideo(viewer);

    await assertRelayed(host, 'host');
    await assertRelayed(viewer, 'viewer');

    await mkdir(RESULTS_DIR, { recursive: true });
    await viewer.screenshot({ path: path.join(RESULTS_DIR, 'turn-viewer.png') });
    assertNoPageErrors(pages);
  });
});

test('the WHEP player with ?relay=1 takes TURN from the OPTIONS Link headers and plays through coturn', { timeout: 60_000 }, async () => {
  assert.ok(liveRoom, 'needs the live room of the previous test');
  await withDiagnostics(async () => {
    const whep = await openPage(await newContext(), 'whep',
      `${server.url}/whep.html?room=${encodeURIComponent(liveRoom)}&relay=1`, pages);
    await whep.waitForFunction(() => document.querySelector('#video').videoWidth > 0, null, { timeout: FIRST_FRAME_MS });
    const servers = await whep.evaluate(() => window.marquee.state.iceServers);
    assert.ok(servers.some((s) => s.urls.some((u) => u.startsWith('turn:'))), `no TURN server from OPTIONS: ${JSON.stringify(servers)}`);
    await assertMovingVideo(whep);
    await assertRelayed(whep, 'whep');
    await mkdir(RESULTS_DIR, { recursive: true });
    await whep.screenshot({ path: path.join(RESULTS_DIR, 'turn-whep.png') });
    assertNoPageErrors(pages);
  });
});

// ---- Steps -------------------------------------------------------------------------------

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['camera', 'microphone'], { origin: server.url });
  contexts.push(context);
  return context;
}

async function assertMovingVideo(page) {
  const frames = await countVideoFrames(page, '#video', FRAME_WINDOW_MS);
  const before = await peerStats(page);
  await sleep(1_000);
  const afterStats = await peerStats(page);
  console.log(`${page.marqueeName}: ${frames} frames in ${FRAME_WINDOW_MS} ms; framesDecoded`
    + ` ${before?.video?.framesDecoded} -> ${afterStats?.video?.framesDecoded}`);
  assert.ok(frames > MIN_FRAMES_IN_WINDOW, `${page.marqueeName}: only ${frames} frames in ${FRAME_WINDOW_MS} ms`);
  assert.ok(afterStats?.video?.framesDecoded > before?.video?.framesDecoded,
    `${page.marqueeName}: framesDecoded not rising`);
}

/** The page's selected candidate pair has a local `relay` candidate allocated on our coturn. */
async function assertRelayed(page, name) {
  const stats = await peerStats(page);
  console.log(`${name}: selected pair ${JSON.stringify(stats?.pair)}`);
  assert.ok(stats?.pair, `${name}: no selected candidate pair`);
  assert.equal(stats.pair.localType, 'relay', `${name}: local candidate is ${stats.pair.localType}, not relay`);
  assert.ok(stats.pair.url?.includes(`:${turnPort}`) ?? true, `${name}: relay from ${stats.pair.url}, not our coturn`);
}

// ---- coturn ------------------------------------------------------------------------------

async function startCoturn() {
  turnPort = await freeUdpPort();
  const minPort = 49152 + Math.floor(Math.random() * ((65535 - 49152 - RELAY_PORTS) / RELAY_PORTS)) * RELAY_PORTS;
  const args = ['-n', '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${turnPort}`,
    '--use-auth-secret', `--static-auth-secret=${turnSecret}`, '--realm=marquee', '--allow-loopback-peers',
    '--no-tls', '--no-dtls', '--no-cli', '--no-tcp-relay', `--min-port=${minPort}`, `--max-port=${minPort + RELAY_PORTS - 1}`,
    // Logs to our stdout; the user database (never used with REST secrets, but always opened)
    // and the pid file go to our temporary directory instead of /var.
    '--log-file=stdout', '--simple-log', `--userdb=${path.join(tmp, 'turndb')}`, `--pidfile=${path.join(tmp, 'turnserver.pid')}`,
    '--verbose'];
  const proc = spawnLogged('turnserver', TURNSERVER, args);
  try {
    await waitFor(async () => {
      if (proc.status()) throw new Error(`turnserver exited early (${JSON.stringify(proc.status())})`);
      return stunBindingAnswered(turnPort);
    }, { timeoutMs: TURN_READY_MS, intervalMs: 200, what: `coturn to answer a STUN binding on 127.0.0.1:${turnPort}` });
  } catch (err) {
    await proc.stop(3_000);
    err.message += `\n--- turnserver ${args.join(' ')}\n${proc.text()}`;
    throw err;
  }
  return proc;
}

/** Sends one STUN Binding Request (RFC 8489) and resolves true on a Binding Success Response. */
function stunBindingAnswered(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    const request = Buffer.alloc(20);
    request.writeUInt16BE(0x0001, 0); // Binding Request
    request.writeUInt16BE(0, 2); // no attributes
    request.writeUInt32BE(0x2112a442, 4); // magic cookie
    const id = randomBytes(12);
    id.copy(request, 8);
    const done = (ok) => {
      clearTimeout(timer);
      sock.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    sock.on('message', (msg) => done(msg.length >= 20 && msg.readUInt16BE(0) === 0x0101 && msg.subarray(8, 20).equals(id)));
    sock.on('error', () => done(false));
    sock.send(request, port, '127.0.0.1');
  });
}

// ---- Diagnostics -------------------------------------------------------------------------

function withDiagnostics(body) {
  return runWithDiagnostics(pages, body, {
    pageState: async (page) => {
      return JSON.stringify({
        state: await page.evaluate(() => window.marquee?.state),
        iceServers: await page.evaluate(() => window.marquee?.signaling?.iceServers ?? window.marquee?.state?.iceServers),
        stats: await peerStats(page),
      });
    },
    extra: () => [
      `--- turnserver (last lines)\n${turn?.text(60) ?? ''}`,
      `--- marquee (last lines)\n${server?.log().slice(-60).join('\n') ?? ''}`,
    ],
  });
}
