// Shared by the browser tests (live.test.mjs, party.test.mjs): a real `marquee` server on
// free loopback ports, Debian's Chromium through playwright-core, and pages that record
// their console, errors and WebSocket frames for the failure report.
//
// Environment:
//   MARQUEE_BIN   server binary (default: ../target/debug/marquee, relative to web-demo/)
//   MARQUEE_URL   use an already running server at this URL instead of spawning one
//   CHROMIUM_BIN  browser (default: /usr/bin/chromium, Debian's `chromium` package)
//
// The server is started as
//   marquee --http 127.0.0.1:<free tcp port> --udp 127.0.0.1:<free udp port> --web-root <web-demo> --dev
// and must serve web-demo/ at `/` and the signaling WebSocket at `/ws`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const WEB_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const RESULTS_DIR = path.join(WEB_ROOT, 'test-results');
export const MARQUEE_BIN = path.resolve(WEB_ROOT, process.env.MARQUEE_BIN ?? '../target/debug/marquee');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** GUIDE §3 flags, plus loopback ICE candidates and autoplay without a click. */
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
];

const SERVER_READY_MS = 30_000;
const SERVER_EXIT_MS = 5_000;
const BROWSER_LAUNCH_MS = 30_000;
const PAGE_LOAD_MS = 15_000;

/** The server under test: `MARQUEE_URL`, or a fresh `MARQUEE_BIN` process. */
export async function serverFromEnv() {
  return process.env.MARQUEE_URL ? externalServer(process.env.MARQUEE_URL) : startServer();
}

/**
 * Debian's Chromium with the GUIDE flags. `executablePath` replaces the binary (e.g. a
 * wrapper that runs it inside a network namespace); `extraArgs` are appended.
 */
export async function launchBrowser({ executablePath = CHROMIUM_BIN, extraArgs = [] } = {}) {
  assert.ok(existsSync(CHROMIUM_BIN), `no browser at ${CHROMIUM_BIN}: apt-get install -y chromium`);
  return chromium.launch({ executablePath, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: BROWSER_LAUNCH_MS });
}

/**
 * Opens `url` in a new page of `context`, recording what the page logs and sends.
 * The page is appended to `pages` (for `assertNoPageErrors` and diagnostics).
 */
export async function openPage(context, name, url, pages) {
  const page = await context.newPage();
  const log = [];
  page.marqueeName = name;
  page.marqueeLog = log;
  page.marqueeErrors = [];
  const stamp = () => new Date().toISOString().slice(11, 23);
  page.on('console', (m) => log.push(`${stamp()} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => {
    log.push(`${stamp()} pageerror: ${e.stack ?? e}`);
    page.marqueeErrors.push(String(e));
  });
  page.on('requestfailed', (r) => log.push(`${stamp()} requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('websocket', (ws) => {
    log.push(`${stamp()} ws open ${ws.url()}`);
    const brief = (p) => String(p).slice(0, 160).replace(/\\r\\n/g, ' ');
    ws.on('framesent', (f) => log.push(`${stamp()} ws -> ${brief(f.payload)}`));
    ws.on('framereceived', (f) => log.push(`${stamp()} ws <- ${brief(f.payload)}`));
    ws.on('close', () => log.push(`${stamp()} ws closed`));
  });
  pages.push(page);
  await page.goto(url, { timeout: PAGE_LOAD_MS });
  return page;
}

export function assertNoPageErrors(pages) {
  const errors = pages.flatMap((p) => p.marqueeErrors.map((e) => `${p.marqueeName}: ${e}`));
  assert.deepEqual(errors, [], 'uncaught errors in pages');
}

// ---- Server ----------------------------------------------------------------------------

export function externalServer(url) {
  return { url: url.replace(/\/$/, ''), log: () => ['(external server: see its own log)'], stop: async () => {} };
}

/**
 * `--dev` (no access tokens: these tests exercise the pages, not auth) unless `dev: false`;
 * `extraArgs` are appended to the command line (e.g. `--turn-url …`, `--auth-secret …`).
 */
export async function startServer({ dev = true, extraArgs = [] } = {}) {
  assert.ok(existsSync(MARQUEE_BIN),
    `no server binary at ${MARQUEE_BIN}: build it (cargo build -p signaling) or set MARQUEE_BIN / MARQUEE_URL`);
  const httpPort = await freeTcpPort();
  const udpPort = await freeUdpPort();
  const args = ['--http', `127.0.0.1:${httpPort}`, '--udp', `127.0.0.1:${udpPort}`, '--web-root', WEB_ROOT,
    ...(dev ? ['--dev'] : []), ...extraArgs];
  const lines = [];
  const proc = spawn(MARQUEE_BIN, args, {
    env: { RUST_LOG: 'info', NO_COLOR: '1', ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk) => {
    lines.push(...chunk.toString().split('\n').filter(Boolean));
    if (lines.length > 2000) lines.splice(0, lines.length - 2000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((resolve) => proc.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));
  proc.on('error', (err) => lines.push(`spawn error: ${err.message}`));

  const url = `http://127.0.0.1:${httpPort}`;
  const stop = async () => {
    if (exited) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), SERVER_EXIT_MS);
    await exit;
    clearTimeout(timer);
  };
  const deadline = Date.now() + SERVER_READY_MS;
  for (;;) {
    if (exited) {
      throw new Error(`marquee exited early (${JSON.stringify(exited)}): ${MARQUEE_BIN} ${args.join(' ')}\n${lines.join('\n')}`);
    }
    try {
      const res = await fetch(`${url}/`, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`marquee did not serve GET / with 200 within ${SERVER_READY_MS} ms\n${lines.join('\n')}`);
    }
    await sleep(200);
  }
  return { url, log: () => lines, stop };
}

/** A TCP port free right now (bound to 0, then released for the server to take). */
export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.on('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

// ---- Real third-party peers (whip.test.mjs, turn.test.mjs) -----------------------------

/** The repository root (scripts/interop/ lives there). */
export const REPO_ROOT = path.resolve(WEB_ROOT, '..');

/**
 * Spawns `command args`, keeping the last `maxLines` lines of its stdout and stderr.
 * Returns `{name, proc, lines, exited, status(), stop(graceMs), text()}`: `exited` resolves
 * with `{code, signal}`; `stop` sends SIGTERM, then SIGKILL after `graceMs`.
 */
export function spawnLogged(name, command, args, { env = process.env, maxLines = 3000 } = {}) {
  const lines = [];
  const proc = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (chunk) => {
    lines.push(...chunk.toString().split('\n').filter(Boolean));
    if (lines.length > maxLines) lines.splice(0, lines.length - maxLines);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let status = null;
  proc.on('error', (err) => {
    lines.push(`spawn error: ${err.message}`);
  });
  const exited = new Promise((resolve) => {
    proc.on('error', () => {
      status ??= { code: null, signal: null, error: true };
      resolve(status);
    });
    proc.on('exit', (code, signal) => {
      status = { code, signal };
      resolve(status);
    });
  });
  return {
    name,
    proc,
    lines,
    exited,
    status: () => status,
    text: (last = 200) => lines.slice(-last).join('\n'),
    async stop(graceMs = 5_000) {
      if (status) return status;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
      return status;
    },
  };
}

/** Waits until `predicate()` (sync or async) is truthy; throws `what` after `timeoutMs`. */
export async function waitFor(predicate, { timeoutMs, intervalMs = 200, what }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Frames the `<video>` matching `selector` presents during `ms` (requestVideoFrameCallback). */
export async function countVideoFrames(page, selector, ms) {
  return page.evaluate(({ selector, ms }) => new Promise((resolve) => {
    const video = document.querySelector(selector);
    let frames = 0;
    let done = false;
    const onFrame = () => {
      if (done) return;
      frames++;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    setTimeout(() => { done = true; resolve(frames); }, ms);
  }), { selector, ms });
}

/**
 * Receive-side and ICE facts of the page's `window.marquee.pc`, or null without one:
 * `{video: {packets, framesDecoded, width, height, codec}, audio: {packets}, pair: {local,
 * remote, localType, remoteType, protocol, relayProtocol}}` (the selected candidate pair).
 */
export async function peerStats(page) {
  return page.evaluate(async () => {
    const pc = window.marquee?.pc;
    if (!pc) return null;
    const all = await pc.getStats();
    const out = { video: null, audio: null, outVideo: null, pair: null, connectionState: pc.connectionState };
    for (const s of all.values()) {
      if (s.type === 'inbound-rtp') {
        const entry = {
          packets: s.packetsReceived ?? 0, framesDecoded: s.framesDecoded ?? 0,
          width: s.frameWidth ?? 0, height: s.frameHeight ?? 0, codec: all.get(s.codecId)?.mimeType ?? null,
        };
        out[s.kind] = entry;
      } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.outVideo = { packets: s.packetsSent ?? 0, framesEncoded: s.framesEncoded ?? 0 };
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = all.get(s.selectedCandidatePairId);
        const local = all.get(pair?.localCandidateId);
        const remote = all.get(pair?.remoteCandidateId);
        if (pair) {
          out.pair = {
            state: pair.state,
            local: `${local?.address}:${local?.port}`, localType: local?.candidateType ?? null,
            relayProtocol: local?.relayProtocol ?? null, url: local?.url ?? null,
            remote: `${remote?.address}:${remote?.port}`, remoteType: remote?.candidateType ?? null,
            protocol: local?.protocol ?? null,
          };
        }
      }
    }
    return out;
  });
}

/**
 * Runs a test's `body`; when it throws, the error (also printed) gains what each of
 * `pages` showed, `pageState(page)` and its last console lines, then `extra()`'s parts (the
 * processes' last log lines), so a browser-test failure in CI explains itself. `pages` is
 * emptied first: the body pushes the pages it opens. `onFailedPage(page)` runs after a
 * page's report (a screenshot); its errors are ignored.
 */
export async function runWithDiagnostics(pages, body, { pageState, onFailedPage, extra = () => [] }) {
  pages.length = 0;
  try {
    await body();
  } catch (err) {
    const parts = [];
    for (const page of pages) {
      let state;
      try {
        state = await pageState(page);
      } catch (e) {
        state = `(unavailable: ${e.message})`;
      }
      parts.push(`--- page ${page.marqueeName} (${page.url()})\nstate: ${state}\n${page.marqueeLog.slice(-80).join('\n')}`);
      await onFailedPage?.(page).catch(() => {});
    }
    parts.push(...extra());
    const diagnostics = parts.join('\n');
    console.error(diagnostics);
    err.message += `\n\n${diagnostics}`;
    throw err;
  }
}
