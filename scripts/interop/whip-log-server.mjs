#!/usr/bin/env node
// A WHIP/WHEP endpoint that only logs: prints every request a client makes (method, path,
// headers, body) and answers just enough for the client to go on, so a real client's
// behaviour (offer SDP, trickle PATCHes, token, teardown) can be observed without a server.
//
//   node scripts/interop/whip-log-server.mjs [host] [port]     (default 127.0.0.1 8089)
//
// POST → 201 with a Location, an ETag and a syntactically valid answer (ICE-lite, a host
// candidate on `host`, a made-up DTLS fingerprint: media never flows, the client gives up
// after its ICE/DTLS timeout). PATCH → 204, DELETE → 200, OPTIONS → 204 with a TURN Link.
import http from 'node:http';

const host = process.argv[2] ?? '127.0.0.1';
const port = Number(process.argv[3] ?? 8089);
let sessions = 0;

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString();
    const stamp = new Date().toISOString().slice(11, 23);
    console.log(`${stamp} ${req.method} ${req.url}`);
    for (const [k, v] of Object.entries(req.headers)) console.log(`  ${k}: ${v}`);
    if (body) console.log(body.replace(/\r\n/g, '\n').replace(/^/gm, '  | '));
    if (req.method === 'POST') {
      const id = `s${++sessions}`;
      res.writeHead(201, {
        'Content-Type': 'application/sdp',
        Location: `${req.url.replace(/\/$/, '')}/${id}`,
        ETag: `"${id}-1"`,
      });
      res.end(answerFor(body));
    } else if (req.method === 'PATCH') {
      res.writeHead(204).end();
    } else if (req.method === 'DELETE') {
      res.writeHead(200).end();
    } else if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        Link: `<turn:${host}:3478?transport=udp>; rel="ice-server"; username="u"; credential="p"; credential-type="password"`,
      }).end();
    } else {
      res.writeHead(405).end();
    }
  });
});
server.listen(port, host, () => console.log(`listening on http://${host}:${port}`));

/** Mirrors the offer's m-lines (first codec of each), ICE-lite, one host candidate. */
function answerFor(offer) {
  const lines = offer.split(/\r?\n/);
  const out = ['v=0', 'o=- 1 1 IN IP4 0.0.0.0', 's=-', 't=0 0', 'a=ice-lite'];
  const mids = lines.filter((l) => l.startsWith('a=mid:')).map((l) => l.slice(6));
  if (mids.length) out.push(`a=group:BUNDLE ${mids.join(' ')}`);
  let media = null;
  const flush = () => {
    if (!media) return;
    out.push(`m=${media.kind} 9 UDP/TLS/RTP/SAVPF ${media.pt}`, 'c=IN IP4 0.0.0.0',
      `a=mid:${media.mid}`, 'a=ice-ufrag:logufrag', 'a=ice-pwd:logpasswordlogpasswordlogpa',
      'a=fingerprint:sha-256 ' + Array(32).fill('AB').join(':'), 'a=setup:passive', 'a=rtcp-mux',
      'a=recvonly', media.rtpmap, `a=candidate:1 1 udp 2130706431 ${host} 9 typ host`, 'a=end-of-candidates');
  };
  for (const l of lines) {
    if (l.startsWith('m=')) {
      flush();
      const [kind, , , pt] = l.slice(2).split(' ');
      media = { kind, pt, mid: '', rtpmap: '' };
    } else if (media && l.startsWith('a=mid:')) media.mid = l.slice(6);
    else if (media && !media.rtpmap && l.startsWith(`a=rtpmap:${media.pt} `)) media.rtpmap = l;
  }
  flush();
  return `${out.join('\r\n')}\r\n`;
}
