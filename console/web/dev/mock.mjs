// A development stand-in for the console listener, to look at the pages without a site:
// serves dist/ with the console's security headers (the real Content-Security-Policy), a
// fixed /api (one user, three devices, two sessions), and the two WebSockets: the control
// one plays a tiny fake shell (echo, `ls`, `date`) and the screen one is proxied to a VNC
// server at $MOCK_VNC (host:port, e.g. x11vnc on an Xvfb display) when set.
//
//   node dev/mock.mjs [port]     (default 8099; plain HTTP on 127.0.0.1)
//
// Not part of the build; the real server is package console (Go).
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { createHash } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import { join, dirname, normalize } from 'node:path';

const dist = join(dirname(new URL(import.meta.url).pathname), '..', 'dist');
const port = Number(process.argv[2] || 8099);
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const csrf = 'mock-csrf-token';
const now = Date.now();
const ago = (min) => new Date(now - min * 60000).toISOString();

const devices = [
  { id: '7f3a9c2e5b1d4e8f9a0b1c2d3e4f5a6b', name: 'ws-042', fqdn: 'ws-042.corp.example', os: 'Debian GNU/Linux 13', agent_version: 'v0.12.0', serial: '4f1e2d3c', public_key_hash: 'b5d1c0a3e97f2e4c6a8b0d1f3e5a7c9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c', hardware_id: 'hw-5c0ffee', first_seen: ago(60 * 24 * 40), last_seen: ago(2), last_location: 'intranet', addresses: ['10.1.2.42', 'fe80::42'], groups: ['workstations', 'berlin'], compliance: 'compliant', connected: 1, blocked: false },
  { id: '1b2c3d4e5f60718293a4b5c6d7e8f901', name: 'kiosk-7', fqdn: 'kiosk-7.corp.example', os: 'Debian GNU/Linux 12', agent_version: 'v0.11.3', serial: '77aa01', public_key_hash: '0c1d2e3f', first_seen: ago(60 * 24 * 90), last_seen: ago(300), last_location: 'internet', groups: ['kiosks'], compliance: 'noncompliant', connected: 1, blocked: false, warnings: ['agent older than the site minimum'] },
  { id: 'a0a1a2a3a4a5a6a7a8a9aaabacadaeaf', name: 'srv-db1', fqdn: 'srv-db1.corp.example', os: 'Debian GNU/Linux 13', agent_version: 'v0.12.0', serial: '99bb02', public_key_hash: 'ffee', first_seen: ago(60 * 24 * 10), last_seen: ago(1), last_location: 'intranet', groups: ['servers'], compliance: 'noncompliant', connected: 1, blocked: false },
  { id: 'b0b1b2b3b4b5b6b7b8b9babbbcbdbebf', name: 'lab-3', fqdn: 'lab-3.corp.example', os: 'Debian GNU/Linux 13', agent_version: 'v0.12.0', serial: '12cd03', public_key_hash: 'abcd', first_seen: ago(60 * 24 * 5), last_seen: ago(60 * 24 * 2), last_location: 'internet', groups: [], compliance: 'unknown', connected: 0, blocked: false },
];
const sessions = [
  { id: 'c0ffee00112233445566778899aabbcc', device: devices[0].id, device_name: 'ws-042', helper: 'alice', helper_name: 'Alice Admin', sharer: 'bob', sharer_name: 'Bob User', state: 'active', mode: 'control', modes: [{ mode: 'view', at: ago(12) }, { mode: 'control', at: ago(10) }], transport: 'relay', e2e: false, console: true, mp: 'mp1', requested_at: ago(12), started_at: ago(12), bytes_to_device: 1200, bytes_from_device: 48000 },
  { id: 'deadbeef00112233445566778899aabb', device: devices[2].id, device_name: 'srv-db1', helper: 'alice', helper_name: 'Alice Admin', state: 'ended', outcome: 'completed', mode: 'unattended', modes: [{ mode: 'unattended', at: ago(200) }], transport: 'direct', e2e: true, console: false, mp: 'mp1', requested_at: ago(200), started_at: ago(200), ended_at: ago(180), bytes_to_device: 300, bytes_from_device: 9000 },
];

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.txt': 'text/plain; charset=utf-8' };
function headers(res, type) {
  res.setHeader('Content-Security-Policy', CSP);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Referrer-Policy', 'no-referrer');
  if (type) res.setHeader('Content-Type', type);
}
function json(res, status, v) {
  headers(res, 'application/json');
  res.writeHead(status);
  res.end(JSON.stringify(v));
}
function file(res, name) {
  const p = normalize(join(dist, name));
  if (!p.startsWith(dist) || !existsSync(p)) return json(res, 404, { error: { code: 'not_found', message: 'no such file' } });
  headers(res, types[p.slice(p.lastIndexOf('.'))] || 'application/octet-stream');
  res.writeHead(200);
  res.end(readFileSync(p));
}

const server = createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  const p = u.pathname;
  if (req.method !== 'GET' && req.headers['x-csrf-token'] !== csrf) return json(res, 403, { error: { code: 'csrf', message: 'CSRF token missing or wrong' } });
  if (p.startsWith('/assets/')) return file(res, p.slice(1));
  if (p === '/logged-out') return file(res, 'logged-out.html');
  if (p === '/logout' && req.method === 'POST') { res.writeHead(303, { Location: '/logged-out' }); return res.end(); }
  if (p === '/api/me') return json(res, 200, { user: 'alice', display_name: 'Alice Admin', csrf, expires_at: ago(-480), permissions: ['ReadDevices', 'OfferRemoteAssistance'] });
  if (p === '/api/v1/admin/devices') return json(res, 200, devices);
  if (p === '/api/v1/admin/groups') return json(res, 200, [{ name: 'workstations', policy: 'ws-default', priority: 10 }, { name: 'berlin', policy: 'berlin', priority: 20 }]);
  if (p === '/api/v1/admin/sessions' && req.method === 'GET') return json(res, 200, sessions);
  if (p === '/api/v1/admin/sessions' && req.method === 'POST') {
    const id = 'feed0000' + String(Date.now()).slice(-8) + '0000000000000000';
    return json(res, 201, { session: { id, mode: 'control', state: 'requested' }, ticket_id: 'tk-' + id.slice(0, 8), role: 'helper', modes: ['view', 'control'], device: { id: devices[0].id, name: 'ws-042' } });
  }
  let m = p.match(/^\/api\/v1\/admin\/devices\/([^/]+)(\/[a-z]+)?$/);
  if (m) {
    const d = devices.find((x) => x.id === m[1]);
    if (!d) return json(res, 404, { error: { code: 'not_found', message: 'no such device' } });
    switch (m[2]) {
      case undefined: return json(res, 200, d);
      case '/remote': return json(res, 200, { online: d.connected > 0, modes: d.name === 'srv-db1' ? [] : ['view', 'control', 'elevated'], kinds: ['terminal', 'screen'], compliance_warning: d.compliance === 'noncompliant' ? `${d.name} is not compliant: disk encryption is off` : undefined });
      case '/deployments': return json(res, 200, d.name === 'ws-042' ? [{ id: 'dep-1', package: 'firefox-esr', version: '128.5.0', state: 'installed', dp: 'dp-berlin', updated_at: ago(600) }, { id: 'dep-2', package: 'corp-vpn', version: '2.1', state: 'failed', error: 'exit status 1', dp: 'dp-berlin', updated_at: ago(90) }] : []);
      case '/messages': return json(res, 200, { device_id: d.id, messages: [{ id: 'm1', time: ago(30), severity: 'info', component: 'inventory', text: 'inventory sent', received_at: ago(30) }, { id: 'm2', time: ago(5), severity: 'warning', component: 'deploy', text: 'corp-vpn: exit status 1', received_at: ago(5) }], truncated: false });
    }
  }
  m = p.match(/^\/api\/v1\/admin\/sessions\/([^/]+)(\/end)?$/);
  if (m) {
    const s = sessions.find((x) => x.id === m[1]) || { ...sessions[0], id: m[1] };
    if (m[2]) return json(res, 200, { ...s, state: 'ended' });
    return json(res, 200, s);
  }
  if (p.startsWith('/api/')) return json(res, 404, { error: { code: 'not_found', message: 'not on the console allowlist' } });
  return file(res, 'index.html');
});

// --- WebSockets (RFC 6455, just enough: unfragmented frames, masking, close, ping) ---
function accept(req, socket, protocol) {
  const key = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${key}\r\n` + (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : '') + '\r\n');
}
function frame(op, payload) {
  const b = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  let head;
  if (b.length < 126) head = Buffer.from([0x80 | op, b.length]);
  else if (b.length < 65536) { head = Buffer.alloc(4); head[0] = 0x80 | op; head[1] = 126; head.writeUInt16BE(b.length, 2); }
  else { head = Buffer.alloc(10); head[0] = 0x80 | op; head[1] = 127; head.writeBigUInt64BE(BigInt(b.length), 2); }
  return Buffer.concat([head, b]);
}
function reader(socket, onMessage) {
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 0x0f;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; } else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = buf[1] & 0x80;
      if (buf.length < off + (masked ? 4 : 0) + len) return;
      const mask = masked ? buf.subarray(off, off + 4) : null;
      off += masked ? 4 : 0;
      const data = Buffer.from(buf.subarray(off, off + len));
      if (mask) for (let i = 0; i < data.length; i++) data[i] ^= mask[i & 3];
      buf = buf.subarray(off + len);
      if (op === 8) { if (socket.writable) socket.end(frame(8, data.subarray(0, 2))); return; }
      if (op === 9) { socket.write(frame(10, data)); continue; }
      onMessage(op, data);
    }
  });
}

server.on('upgrade', (req, socket) => {
  socket.on('error', () => socket.destroy());
  const u = new URL(req.url, 'http://x');
  if (u.searchParams.get('csrf') !== csrf || !u.searchParams.get('ticket') || u.searchParams.get('ticket') === 'refused') { socket.end('HTTP/1.1 403 Forbidden\r\n\r\n'); return; }
  if (/^\/ws\/sessions\/[^/]+\/screen$/.test(u.pathname)) {
    if (!process.env.MOCK_VNC) { socket.end('HTTP/1.1 404 Not Found\r\n\r\n'); return; }
    const [host, vport] = process.env.MOCK_VNC.split(':');
    const protos = (req.headers['sec-websocket-protocol'] || '').split(',').map((s) => s.trim());
    accept(req, socket, protos.includes('binary') ? 'binary' : '');
    const vnc = connect(Number(vport), host);
    vnc.on('data', (d) => socket.write(frame(2, d)));
    vnc.on('close', () => socket.destroy());
    socket.on('close', () => vnc.destroy());
    reader(socket, (op, data) => vnc.write(data));
    return;
  }
  if (!/^\/ws\/sessions\/[^/]+$/.test(u.pathname)) { socket.end('HTTP/1.1 404 Not Found\r\n\r\n'); return; }
  accept(req, socket, '');
  const send = (m) => socket.write(frame(1, JSON.stringify(m)));
  const out = (s) => socket.write(frame(2, Buffer.from(s)));
  const screen = !u.searchParams.get('rows');
  send({ type: 'status', text: 'waiting for consent from bob on ws-042' });
  setTimeout(() => {
    send({ type: 'card', session: 'mock', kind: screen ? 'screen' : 'terminal', device: { id: devices[0].id, name: 'ws-042' }, mode: 'control', transport: 'relay', sharer: 'bob', sharer_name: 'Bob User' });
    if (!screen) out('Debian GNU/Linux 13 ws-042\r\n\r\nbob@ws-042:~$ ');
    send({ type: 'chat', from: 'sharer', text: 'Hi, the VPN client fails since this morning.' });
  }, 300);
  let line = '';
  reader(socket, (op, data) => {
    if (op === 2) {
      for (const ch of data.toString()) {
        if (ch === '\r') {
          const cmd = line.trim();
          line = '';
          let r = '';
          if (cmd === 'ls') r = '\x1b[1;34mDocuments\x1b[0m  \x1b[1;34mDownloads\x1b[0m  notes.txt  \x1b[1;32mvpn-debug.sh\x1b[0m\r\n';
          else if (cmd === 'date') r = new Date().toString() + '\r\n';
          else if (cmd === 'colors') { for (let i = 0; i < 16; i++) r += `\x1b[48;5;${i * 16}m  `; r += '\x1b[0m \x1b[38;2;255;128;0mtruecolor\x1b[0m\r\n'; } else if (cmd) r = `${cmd}: command not found\r\n`;
          out('\r\n' + r + 'bob@ws-042:~$ ');
        } else if (ch === '\x7f') { if (line) { line = line.slice(0, -1); out('\b \b'); } } else { line += ch; out(ch); }
      }
      return;
    }
    let m;
    try { m = JSON.parse(data.toString()); } catch { return; }
    if (m.type === 'chat') setTimeout(() => send({ type: 'chat', from: 'sharer', text: `ok: ${m.text}` }), 200);
    if (m.type === 'mode') send({ type: 'mode', mode: m.mode, granted: m.mode !== 'elevated', reason: m.mode === 'elevated' ? 'the sharer said no' : undefined });
    if (m.type === 'resize') send({ type: 'status', text: `resized to ${m.cols}×${m.rows}` });
    if (m.type === 'end') { send({ type: 'end', reason: 'ended by the helper' }); socket.end(frame(8, Buffer.from([0x03, 0xe8]))); }
  });
});

server.listen(port, '127.0.0.1', () => console.log(`mock console on http://127.0.0.1:${port}/devices`));
