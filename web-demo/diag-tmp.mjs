import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
const srv = spawn('../target/debug/marquee', ['--http', '127.0.0.1:8097', '--udp', '127.0.0.1:7897', '--web-root', process.cwd()], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn,rtc_dtls=error,rtc=error' } });
srv.stdout.on('data', d => process.stdout.write('SRV ' + d)); srv.stderr.on('data', d => process.stdout.write('SRV ' + d));
await new Promise(r => setTimeout(r, 1500));
process.on('exit', () => srv.kill());
try {
const url = 'http://127.0.0.1:8097';
const args = ['--headless','--no-sandbox','--disable-gpu','--use-fake-device-for-media-stream','--use-fake-ui-for-media-stream','--allow-loopback-in-peer-connection','--autoplay-policy=no-user-gesture-required'];
var b = await chromium.launch({ executablePath: '/usr/bin/chromium', args });
const page = async (u) => { const c = await b.newContext(); const p = await c.newPage(); await p.goto(u); return p; };
const st = (p, type) => p.evaluate(async (type) => {
  const pc = window.marquee.pc; const all = await pc.getStats(); const o = [];
  let sel = null; for (const t of all.values()) if (t.type === 'transport') sel = t.selectedCandidatePairId;
  for (const s of all.values()) {
    if (s.type === type) o.push(`${s.kind[0]} pkts=${s.packetsSent ?? s.packetsReceived}`);
    if (s.type === 'candidate-pair' && (s.nominated || s.id === sel)) { const l = all.get(s.localCandidateId), r = all.get(s.remoteCandidateId); o.push(`[${l?.address}:${l?.port}->${r?.address}:${r?.port}${s.id === sel ? ' SELECTED' : ''} nom=${s.nominated} ${s.state} sent=${s.packetsSent} rcv=${s.packetsReceived} stunResp=${s.responsesReceived}]`); }
  }
  return o.join(' ') + ` ${pc.connectionState}`;
}, type);
const host = await page(url + '/host.html');
await host.click('#start');
await host.waitForFunction(() => window.marquee.pc?.connectionState === 'connected');
const code = await host.textContent('#room-code');
const n = Number(process.argv[2] || 1);
const vs = [];
for (let i = 0; i < n; i++) vs.push(await page(`${url}/watch.html?room=${code}`));
for (const v of vs) await v.waitForFunction(() => document.querySelector('#video').videoWidth > 0, null, {timeout: 10000});
for (let i = 0; i < 8; i++) { await host.waitForTimeout(1500); console.log(i, 'host', await st(host, 'outbound-rtp')); for (const v of vs) console.log('   view', await st(v, 'inbound-rtp')); }
} catch (e) { console.log('ERR', e.message.split('\n')[0]); } finally { await b.close().catch(()=>{}); srv.kill(); }
