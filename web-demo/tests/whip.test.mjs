// WHIP ingest and WHEP playback with real third-party components (GUIDE §3):
//
//   Debian's `whip-client` (GStreamer webrtcbin + libnice)  --WHIP-->  marquee
//   marquee  --WHEP-->  Debian's Chromium playing web-demo/whep.html
//
// libnice never uses loopback and pins its sends to an interface, so everything runs inside
// a network namespace of this test's own: veth pair 10.99.0.1/24 + 10.99.0.2/24, the server
// on 10.99.0.1, Chromium started inside it through a wrapper (`ip netns exec NS chromium`),
// whip-client inside it too. Traffic never leaves the namespace. On Debian bookworm
// whip-client aborts at start ("libsoup2 symbols detected") because libnice's UPnP helper,
// libgupnp-igd, pulls in libsoup 3: a stand-in libgupnp-igd built here from
// scripts/interop/gupnp-igd-stub.c (first on LD_LIBRARY_PATH) turns UPnP off.
//
// The server runs with `--auth-secret`: tokens minted with `marquee token` prove that
// whip-client's `-t` Bearer token and the page's `?token=` are accepted (and a POST without
// one is refused). A coturn in the namespace (10.99.0.1:3478, REST secret) is the server's
// `--turn-url`: whip-client `-f -F` takes it from the OPTIONS `Link` headers and publishes
// through it.
//
// Needs root (ip netns), `whip-client` (simple-whip-client, which pulls in the GStreamer
// plugins), `cc`, `turnserver` (coturn), `chromium`. Environment: MARQUEE_BIN, CHROMIUM_BIN
// (harness.mjs), WHIP_CLIENT_BIN, TURNSERVER_BIN. Screenshots: test-results/whep-*.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CHROMIUM_BIN, MARQUEE_BIN, REPO_ROOT, RESULTS_DIR, WEB_ROOT, assertNoPageErrors, countVideoFrames,
  launchBrowser, openPage, peerStats, spawnLogged, waitFor,
  runWithDiagnostics,
} from './harness.mjs';

const execFile = promisify(execFileCb);

/** Namespace names carry our pid, so a crashed run's leftover can be recognised and removed. */
const NS_PREFIX = 'mqwhip';
const NS = `${NS_PREFIX}${process.pid}`;
const SERVER_IP = '10.99.0.1';
const PEER_IP = '10.99.0.2';
/** Any port is free in a namespace of our own. */
const HTTP_PORT = 8080;
const BASE = `http://${SERVER_IP}:${HTTP_PORT}`;
const WHIP_CLIENT = process.env.WHIP_CLIENT_BIN ?? '/usr/bin/whip-client';
const TURNSERVER = process.env.TURNSERVER_BIN ?? '/usr/bin/turnserver';
const TURN_PORT = 3478;
const STUB_SOURCE = path.join(REPO_ROOT, 'scripts/interop/gupnp-igd-stub.c');

/** Bounds: every wait in this file is one of these. */
const SERVER_READY_MS = 30_000;
const TURN_READY_MS = 10_000;
const WHIP_CONNECTED_MS = 20_000;
const WAITING_SHOWN_MS = 15_000;
const FIRST_FRAME_MS = 20_000;
const FRAME_WINDOW_MS = 2_000;
const MIN_FRAMES_IN_WINDOW = 10;
const STATS_WINDOW_MS = 1_500;
/** After the publisher leaves, the viewer must say so within this (its stall watchdog is 10 s). */
const HOST_GONE_MS = 25_000;

const AUDIO_PIPELINE = 'audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! queue'
  + ' ! opusenc ! rtpopuspay pt=100 ssrc=1 ! queue ! application/x-rtp,media=audio,encoding-name=OPUS,payload=100';
const VIDEO_SOURCE = 'videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1'
  + ' ! videoconvert ! queue';
const VIDEO_PIPELINES = {
  VP8: `${VIDEO_SOURCE} ! vp8enc deadline=1 target-bitrate=800000 ! rtpvp8pay pt=96 ssrc=2`
    + ' ! queue ! application/x-rtp,media=video,encoding-name=VP8,payload=96',
  H264: `${VIDEO_SOURCE} ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=800 key-int-max=60`
    + ' ! video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 ssrc=2 config-interval=-1 aggregate-mode=zero-latency'
    + ' ! queue ! application/x-rtp,media=video,encoding-name=H264,payload=102',
};

let tmp;
let stubDir;
let nsCreated = false;
let server;
let turn;
let browser;
const secret = randomBytes(32).toString('hex');
const turnSecret = randomBytes(24).toString('hex');
/** whip-client processes of the running test (stopped in its finally and in `after`). */
const publishers = [];
const pages = [];

before(async () => {
  assert.equal(process.getuid?.(), 0, 'whip.test.mjs needs root: it creates a network namespace (ip netns)');
  for (const [bin, pkg] of [[WHIP_CLIENT, 'simple-whip-client'], ['/usr/bin/cc', 'gcc'], [CHROMIUM_BIN, 'chromium'],
    [TURNSERVER, 'coturn'],
    [MARQUEE_BIN, '(cargo build -p signaling --bin marquee)']]) {
    assert.ok(existsSync(bin), `missing ${bin}: install ${pkg}`);
  }
  tmp = await mkdtemp(path.join(os.tmpdir(), 'marquee-whip-'));

  // The libgupnp-igd stand-in (see scripts/interop/gupnp-igd-stub.c).
  stubDir = path.join(tmp, 'lib');
  await mkdir(stubDir);
  await execFile('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-Wl,-soname,libgupnp-igd-1.0.so.4',
    '-o', path.join(stubDir, 'libgupnp-igd-1.0.so.4'), STUB_SOURCE]);

  await removeStaleNamespaces();
  await createNamespace();

  turn = await startNsCoturn();
  server = await startNsServer();
  const wrapper = path.join(tmp, 'chromium-in-netns.sh');
  await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${NS} ${shellQuote(CHROMIUM_BIN)} "$@"\n`);
  await chmod(wrapper, 0o755);
  // host.html needs a secure context for the camera; in the namespace the page is plain http.
  browser = await launchBrowser({ executablePath: wrapper, extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${BASE}`] });
}, { timeout: 90_000 });

after(async () => {
  await Promise.all(publishers.map((p) => p.stop(3_000)));
  await browser?.close().catch(() => {});
  await server?.stop(5_000);
  await turn?.stop(3_000);
  await deleteNamespace();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('whip-client publishes VP8 + Opus with a Bearer token; Chromium plays it over WHEP', { timeout: 150_000 }, async () => {
  const room = 'WHIPVP8';
  await withDiagnostics(async () => {
    // Tokens are enforced: without one the server must refuse to ingest.
    const anonymous = await nsRequest('POST', `${BASE}/whip/${room}`, { body: 'v=0\r\n', contentType: 'application/sdp' });
    assert.equal(anonymous.status, 401, `POST /whip without a token: expected 401, got ${anonymous.status} ${anonymous.body}`);
    // TURN credentials only for a caller the POST would accept (no open relay).
    const anonymousOptions = await nsRequest('OPTIONS', `${BASE}/whep/${room}`);
    assert.equal(anonymousOptions.headers.link, undefined, 'no TURN credentials without a token');
    const options = await nsRequest('OPTIONS', `${BASE}/whep/${room}`,
      { token: await mintToken(room, 'options-probe', ['subscribe']) });
    console.log(`OPTIONS /whep/${room}: ${options.status}, link: ${options.headers.link ?? '(none)'}`);
    assert.match(options.headers.link ?? '', new RegExp(`<turn:${SERVER_IP}:${TURN_PORT}[^>]*>;.*rel="ice-server"`),
      'OPTIONS /whep with a token lists the TURN server as a Link (RFC 9725 §4.6)');

    // The viewer comes first and waits for the host, as people do.
    const viewer = await openViewer(room);
    await viewer.waitForFunction(() => window.marquee.state.notLive > 0
      && /waiting for the host/i.test(document.querySelector('#overlay').textContent), null, { timeout: WAITING_SHOWN_MS });
    await mkdir(RESULTS_DIR, { recursive: true });
    await viewer.screenshot({ path: path.join(RESULTS_DIR, 'whep-waiting.png') });

    const publisher = await startWhipClient(room, 'VP8');
    await assertPlaying(viewer, 'VP8', publisher);
    await viewer.screenshot({ path: path.join(RESULTS_DIR, 'whep-viewer.png') });

    // The host stops: whip-client DELETEs its session (and must get 200), the viewer says so.
    const status = await publisher.stop(5_000);
    const teardown = publisher.lines.slice(publisher.lines.findIndex((l) => /Disconnecting from server/.test(l)));
    console.log(`whip-client exited ${JSON.stringify(status)}; teardown:\n  ${teardown.join('\n  ')}`);
    assert.ok(!teardown.some((l) => /\[[45]\d\d\]/.test(l)), `whip-client's DELETE was refused:\n${teardown.join('\n')}`);
    await viewer.waitForFunction(() => /waiting for the host/i.test(document.querySelector('#overlay').textContent)
      && document.querySelector('#overlay').hidden === false, null, { timeout: HOST_GONE_MS });
    assertNoPageErrors(pages);
  });
});

test('whip-client publishes H.264 + Opus; Chromium plays it over WHEP', { timeout: 120_000 }, async () => {
  const room = 'WHIPH264';
  await withDiagnostics(async () => {
    const publisher = await startWhipClient(room, 'H264');
    const viewer = await openViewer(room);
    await assertPlaying(viewer, 'H264', publisher);
    await mkdir(RESULTS_DIR, { recursive: true });
    await viewer.screenshot({ path: path.join(RESULTS_DIR, 'whep-viewer-h264.png') });
    await publisher.stop(5_000);
    assertNoPageErrors(pages);
  });
});

test('a browser host goes live over WebSocket with ?token=; the WHEP player watches it', { timeout: 90_000 }, async () => {
  const room = 'WSHOST';
  await withDiagnostics(async () => {
    // Tokens are enforced on the WebSocket too: a page without one is told so.
    const anonymous = await openPage(await newContext(), 'watch-without-token', `${BASE}/watch.html?room=${room}`, pages);
    await anonymous.waitForFunction(() => /token_missing/.test(document.querySelector('#error').textContent),
      null, { timeout: WAITING_SHOWN_MS });

    const token = await mintToken(room, 'browser-host', ['publish']);
    const host = await openPage(await newContext(), 'host', `${BASE}/host.html?room=${room}&token=${encodeURIComponent(token)}`, pages);
    await host.click('#start');
    await host.waitForFunction(() => window.marquee.pc?.connectionState === 'connected', null, { timeout: WHIP_CONNECTED_MS });
    // Connected at all proves the page sent its ?token= in `join` (without one: token_missing).

    const viewer = await openViewer(room);
    await assertPlaying(viewer, 'browser host');
    await mkdir(RESULTS_DIR, { recursive: true });
    await viewer.screenshot({ path: path.join(RESULTS_DIR, 'whep-viewer-browser-host.png') });
    assertNoPageErrors(pages);

    // Leaving the player ends its WHEP session at once (DELETE on pagehide), not after a timeout.
    const deleted = () => server.lines.filter((l) => /session ended/.test(l) && /deleted/.test(l)).length;
    const before = deleted();
    await viewer.goto('about:blank');
    await waitFor(() => deleted() > before, { timeoutMs: 5_000, what: 'the server to log the WHEP session ended by DELETE' });
  });
});

test('whip-client takes TURN from the Link headers (-f) and publishes through coturn only (-F)', { timeout: 90_000 }, async () => {
  const room = 'WHIPTURN';
  await withDiagnostics(async () => {
    const allocationsBefore = turn.lines.filter((l) => /ALLOCATE processed, success/.test(l)).length;
    const publisher = await startWhipClient(room, 'VP8', ['-f', '-F']);
    const configured = publisher.lines.filter((l) => /-- -- turns?:\/\//.test(l));
    assert.ok(configured.length > 0, 'whip-client configured no TURN server from the Link headers');
    console.log(`whip-client TURN from Link: ${configured.map((l) => l.replace(/.*-- -- /, '')).join(', ')}`);
    assert.ok(turn.lines.filter((l) => /ALLOCATE processed, success/.test(l)).length > allocationsBefore,
      'coturn granted whip-client no allocation');
    // Forced relay and connected: the media path is whip-client → coturn → marquee.
    const viewer = await openViewer(room);
    await assertPlaying(viewer, 'VP8', publisher);
    assertNoPageErrors(pages);
  });
});

// ---- Steps -------------------------------------------------------------------------------

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['camera', 'microphone'], { origin: BASE });
  return context;
}

async function openViewer(room) {
  const token = await mintToken(room, `viewer-${room.toLowerCase()}`, ['subscribe']);
  return openPage(await newContext(), `whep-${room}`, `${BASE}/whep.html?room=${room}&token=${encodeURIComponent(token)}`, pages);
}

/** Starts whip-client for `room` in the namespace and waits for its peer connection. */
async function startWhipClient(room, codec, extraFlags = []) {
  const token = await mintToken(room, `whip-${room.toLowerCase()}`, ['publish']);
  const publisher = spawnLogged(`whip-client ${codec}`, 'ip', ['netns', 'exec', NS, WHIP_CLIENT,
    '-u', `${BASE}/whip/${room}`, '-t', token, '-o', '-L', '-A', AUDIO_PIPELINE, '-V', VIDEO_PIPELINES[codec],
    ...extraFlags], {
    env: { ...process.env, LD_LIBRARY_PATH: [stubDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') },
  });
  publishers.push(publisher);
  await waitFor(() => {
    if (publisher.status()) throw new Error(`whip-client exited early (${JSON.stringify(publisher.status())})`);
    return publisher.lines.some((l) => /PeerConnection connected/.test(l));
  }, { timeoutMs: WHIP_CONNECTED_MS, what: 'whip-client to print "PeerConnection connected"' });
  return publisher;
}

/**
 * What a person sees: a picture, moving, decoded, with sound arriving. `codec` (VP8, H264),
 * when given, must be what the viewer decodes; `publisher` (whip-client) must still run.
 */
async function assertPlaying(viewer, codec, publisher) {
  const started = Date.now();
  await viewer.waitForFunction(() => document.querySelector('#video').videoWidth > 0, null, { timeout: FIRST_FRAME_MS });
  const firstFrameMs = Date.now() - started;
  const frames = await countVideoFrames(viewer, '#video', FRAME_WINDOW_MS);
  const before = await peerStats(viewer);
  await sleep(STATS_WINDOW_MS);
  const afterStats = await peerStats(viewer);
  const size = await viewer.evaluate(() => `${document.querySelector('#video').videoWidth}x${document.querySelector('#video').videoHeight}`);
  console.log(`${codec}: first frame ${firstFrameMs} ms after the viewer opened or the publisher connected; ${size}; ${frames} frames in`
    + ` ${FRAME_WINDOW_MS} ms; framesDecoded ${before?.video?.framesDecoded} -> ${afterStats?.video?.framesDecoded}`
    + ` (${afterStats?.video?.codec}); audio packets ${before?.audio?.packets} -> ${afterStats?.audio?.packets};`
    + ` ICE ${afterStats?.pair?.local} (${afterStats?.pair?.localType}) -> ${afterStats?.pair?.remote}`);
  assert.ok(frames > MIN_FRAMES_IN_WINDOW, `${codec}: only ${frames} frames presented in ${FRAME_WINDOW_MS} ms`);
  assert.ok(afterStats?.video?.framesDecoded > before?.video?.framesDecoded,
    `${codec}: framesDecoded not rising (${before?.video?.framesDecoded} -> ${afterStats?.video?.framesDecoded})`);
  if (VIDEO_PIPELINES[codec]) {
    assert.match(afterStats.video.codec ?? '', new RegExp(`video/${codec}`, 'i'), `${codec}: the viewer decodes ${afterStats.video.codec}`);
  }
  assert.ok(afterStats?.audio?.packets > before?.audio?.packets,
    `${codec}: inbound audio packets not rising (${before?.audio?.packets} -> ${afterStats?.audio?.packets})`);
  const state = await viewer.evaluate(() => ({ ...window.marquee.state }));
  assert.equal(state.sessions, 1, `${codec}: the viewer needed ${state.sessions} WHEP sessions`);
  if (publisher) assert.ok(!publisher.status(), `${codec}: whip-client exited while publishing`);
}

// ---- Server, tokens, namespace -----------------------------------------------------------

async function startNsServer() {
  const args = ['netns', 'exec', NS, MARQUEE_BIN, '--auth-secret', secret, '--http', `${SERVER_IP}:${HTTP_PORT}`,
    '--udp', `${SERVER_IP}:0`, '--no-loopback', '--web-root', WEB_ROOT,
    '--turn-url', `turn:${SERVER_IP}:${TURN_PORT}?transport=udp`, '--turn-secret', turnSecret];
  // signaling::whip at debug: "session ended" with its reason (deleted, failed, …).
  const proc = spawnLogged('marquee', 'ip', args, { env: { RUST_LOG: 'info,signaling::whip=debug', NO_COLOR: '1', ...process.env } });
  try {
    await waitFor(async () => {
      if (proc.status()) throw new Error(`marquee exited early (${JSON.stringify(proc.status())})`);
      return (await nsRequest('GET', `${BASE}/`).catch(() => ({ status: 0 }))).status === 200;
    }, { timeoutMs: SERVER_READY_MS, intervalMs: 300, what: `marquee to serve GET / on ${BASE}` });
  } catch (err) {
    await proc.stop();
    err.message += `\n--- marquee ${args.slice(3).join(' ')}\n${proc.text()}`;
    throw err;
  }
  return proc;
}

/** coturn on 10.99.0.1:3478 inside the namespace, REST secret auth, relaying on 10.99.0.1. */
async function startNsCoturn() {
  const args = ['netns', 'exec', NS, TURNSERVER, '-n', `--listening-ip=${SERVER_IP}`, `--relay-ip=${SERVER_IP}`,
    `--listening-port=${TURN_PORT}`, '--use-auth-secret', `--static-auth-secret=${turnSecret}`, '--realm=marquee',
    '--no-tls', '--no-dtls', '--no-cli', '--no-tcp-relay', '--min-port=49152', '--max-port=49352',
    '--log-file=stdout', '--simple-log', `--userdb=${path.join(tmp, 'turndb')}`, `--pidfile=${path.join(tmp, 'turnserver.pid')}`,
    '--verbose'];
  const proc = spawnLogged('turnserver', 'ip', args);
  const script = `
    import dgram from 'node:dgram';
    const sock = dgram.createSocket('udp4');
    const req = Buffer.alloc(20); req.writeUInt16BE(1, 0); req.writeUInt32BE(0x2112a442, 4);
    sock.on('message', (m) => { console.log(m.readUInt16BE(0) === 0x0101 ? 'ok' : 'bad'); process.exit(0); });
    setTimeout(() => { console.log('timeout'); process.exit(0); }, 500);
    sock.send(req, ${TURN_PORT}, '${SERVER_IP}');`;
  try {
    await waitFor(async () => {
      if (proc.status()) throw new Error(`turnserver exited early (${JSON.stringify(proc.status())})`);
      const { stdout } = await execFile('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', script]);
      return stdout.trim() === 'ok';
    }, { timeoutMs: TURN_READY_MS, intervalMs: 200, what: `coturn to answer a STUN binding on ${SERVER_IP}:${TURN_PORT}` });
  } catch (err) {
    await proc.stop(3_000);
    err.message += `\n--- turnserver\n${proc.text()}`;
    throw err;
  }
  return proc;
}

async function mintToken(room, identity, grants) {
  const args = ['token', '--auth-secret', secret, '--room', room, '--identity', identity, '--ttl', '600',
    ...grants.flatMap((g) => ['--grant', g])];
  const { stdout } = await execFile(MARQUEE_BIN, args);
  const token = stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `marquee token printed no JWT: ${stdout}`);
  return token;
}

/**
 * An HTTP request made from inside the namespace (this process is outside it): a short node
 * script run with `ip netns exec`. Resolves to {status, headers, body}.
 */
async function nsRequest(method, url, { body, contentType, token } = {}) {
  const script = `
    const [method, url, body, contentType, token] = process.argv.slice(1);
    const headers = {};
    if (contentType) headers['content-type'] = contentType;
    if (token) headers.authorization = 'Bearer ' + token;
    const res = await fetch(url, { method, headers, body: body || undefined, signal: AbortSignal.timeout(3000) });
    console.log(JSON.stringify({ status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() }));`;
  const { stdout } = await execFile('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', script,
    method, url, body ?? '', contentType ?? '', token ?? ''], { timeout: 10_000 });
  return JSON.parse(stdout);
}

async function createNamespace() {
  const ip = (...args) => execFile('ip', args);
  await ip('netns', 'add', NS);
  nsCreated = true;
  await ip('-n', NS, 'link', 'set', 'lo', 'up');
  await ip('-n', NS, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1');
  await ip('-n', NS, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'v0');
  await ip('-n', NS, 'addr', 'add', `${PEER_IP}/24`, 'dev', 'v1');
  await ip('-n', NS, 'link', 'set', 'v0', 'up');
  await ip('-n', NS, 'link', 'set', 'v1', 'up');
}

/** Ends what still runs in our namespace (only processes this test started), then deletes it. */
async function deleteNamespace() {
  if (!nsCreated) return;
  try {
    const { stdout } = await execFile('ip', ['netns', 'pids', NS]);
    for (const pid of stdout.split(/\s+/).filter(Boolean).map(Number)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  } catch { /* no such namespace */ }
  await execFile('ip', ['netns', 'del', NS]).catch((err) => console.error(`ip netns del ${NS}: ${err.message}`));
  nsCreated = false;
}

/** A namespace `mqwhip<pid>` whose test process is gone was left by a killed run. */
async function removeStaleNamespaces() {
  const { stdout } = await execFile('ip', ['netns', 'list']);
  for (const name of stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(NS_PREFIX))) {
    const pid = Number(name.slice(NS_PREFIX.length));
    if (!Number.isInteger(pid) || pid === process.pid || existsSync(`/proc/${pid}`)) continue;
    console.log(`removing stale namespace ${name}`);
    await execFile('ip', ['netns', 'del', name]).catch(() => {});
  }
}

function shellQuote(s) {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---- Diagnostics -------------------------------------------------------------------------

/** Runs `body`; on failure appends the pages' logs and state, whip-client's and the server's output. */
async function withDiagnostics(body) {
  try {
    await runWithDiagnostics(pages, body, {
      pageState: async (page) => {
        let state = JSON.stringify({
          state: await page.evaluate(() => window.marquee?.state),
          stats: await peerStats(page),
          overlay: await page.evaluate(() => document.querySelector('#overlay')?.textContent),
        });
        state += `\noffer: ${sdpSummary(await page.evaluate(() => window.marquee?.pc?.localDescription?.sdp))}`;
        state += `\nanswer: ${sdpSummary(await page.evaluate(() => window.marquee?.pc?.remoteDescription?.sdp))}`;
        return state;
      },
      extra: () => [
        ...publishers.map((p) => `--- ${p.name} (${JSON.stringify(p.status())})\n${p.text(150)}`),
        `--- turnserver (last lines)\n${turn?.text(30) ?? ''}`,
        `--- marquee (last lines)\n${server?.text(80) ?? ''}`,
      ],
    });
  } finally {
    await Promise.all(publishers.map((p) => p.stop(3_000)));
    publishers.length = 0;
    await Promise.all(pages.map((p) => p.context().close().catch(() => {})));
  }
}

/** The lines of an SDP that say what is negotiated: m-lines, direction, codecs. */
function sdpSummary(sdp) {
  if (!sdp) return '(none)';
  return sdp.split(/\r?\n/)
    .filter((l) => /^(m=|a=(mid|sendonly|recvonly|sendrecv|inactive|rtpmap|fmtp|ice-lite|setup|group|ssrc:\d+ cname)\b)/.test(l))
    .join(' | ');
}
