// The live session view (/sessions/{id}/live?ticket=T&kind=terminal|screen&mode=M): the
// control WebSocket (/ws/sessions/{id}: terminal bytes as binary messages, everything else
// as JSON text), xterm.js for a terminal, noVNC's RFB on the screen WebSocket
// (/ws/sessions/{id}/screen) for a screen, chat, mode requests and the end button.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import RFB from '@novnc/novnc';
import { api, csrf, showError } from './api.js';
import { h } from './dom.js';
import { allowScriptStyles } from './cspstyle.js';

const MODES = ['view', 'control', 'elevated', 'unattended'];
const SCREEN_MODES = ['view', 'control', 'unattended'];
const MAX_CHAT = 4096; // bytes of UTF-8 (remote/frame.MaxChat)

export async function livePage(main, id) {
  const q = new URLSearchParams(location.search);
  const ticket = q.get('ticket') || '';
  const kind = q.get('kind') === 'screen' ? 'screen' : 'terminal';
  let mode = q.get('mode') || '';

  const state = h('span', { id: 'session-state', class: 'state' }, 'connecting');
  const card = h('span', { id: 'session-card', class: 'muted' });
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '/sessions' }, 'Sessions'), ' / ',
    h('a', { href: `/sessions/${encodeURIComponent(id)}` }, id.slice(0, 8)), ' / live'),
  h('div', { class: 'live-head' }, h('h1', null, kind === 'screen' ? 'Screen session' : 'Terminal session'), state, card));

  const stage = kind === 'screen'
    ? h('div', { id: 'screen', class: 'screen' })
    : h('div', { id: 'terminal', class: 'terminal' });
  const log = h('ol', { id: 'chat-log', class: 'chat-log', 'aria-live': 'polite' });
  const input = h('input', { id: 'chat-input', type: 'text', maxlength: MAX_CHAT, placeholder: 'Message to the device\'s user', autocomplete: 'off' });
  const send = h('button', { id: 'chat-send', type: 'submit' }, 'Send');
  const modes = kind === 'screen' ? SCREEN_MODES : MODES;
  const select = h('select', { id: 'mode-select', 'aria-label': 'Mode' }, modes.map((m) => h('option', { value: m }, m)));
  const modeReq = h('button', { id: 'mode-request', type: 'button' }, 'Request mode');
  const end = h('button', { id: 'end-session', type: 'button', class: 'danger' }, 'End session');
  const chatForm = h('form', { class: 'chat-form' }, input, send);
  main.append(h('div', { class: 'live' }, h('div', { class: 'stage' }, stage),
    h('aside', { class: 'side' },
      h('section', null, h('h2', null, 'Mode'), h('div', { class: 'row' }, select, modeReq)),
      h('section', { class: 'chat' }, h('h2', null, 'Chat'), log, chatForm),
      h('section', null, end))));
  if (modes.includes(mode)) select.value = mode;

  const note = (text, cls = 'status') => {
    log.append(h('li', { class: cls }, text));
    log.scrollTop = log.scrollHeight;
  };
  const say = (from, text) => {
    log.append(h('li', { class: `msg from-${from}` }, h('span', { class: 'from' }, `${from}: `), text));
    log.scrollTop = log.scrollHeight;
  };

  if (!ticket) {
    state.textContent = 'ended: no ticket';
    showError(new Error('This page needs the ticket of a session you started: start one from a device\'s page.'));
    return;
  }

  let term = null;
  let fit = null;
  let rfb = null;
  let ended = false;
  const wsBase = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws/sessions/${encodeURIComponent(id)}`;
  const auth = { ticket, csrf: csrf() };

  if (kind === 'terminal') {
    term = new Terminal({
      cursorBlink: true, scrollback: 5000, fontSize: 14,
      fontFamily: '"DejaVu Sans Mono", "Liberation Mono", ui-monospace, monospace',
      theme: { background: '#111418', foreground: '#d8dee9' },
    });
    fit = new FitAddon();
    term.loadAddon(fit);
    allowScriptStyles();
    term.open(stage);
    fit.fit();
    term.options.disableStdin = mode === 'view';
  }

  const params = new URLSearchParams(auth);
  if (term) {
    params.set('rows', String(term.rows));
    params.set('cols', String(term.cols));
  }
  const ws = new WebSocket(`${wsBase}?${params}`);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  const sendJSON = (m) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
  };

  const finish = (reason) => {
    if (ended) return;
    ended = true;
    state.textContent = `ended: ${reason}`;
    state.classList.add('ended');
    note(`Session ended: ${reason}`);
    for (const el of [input, send, select, modeReq, end]) el.disabled = true;
    if (term) {
      term.options.disableStdin = true;
      term.write(`\r\n\x1b[2m[session ended: ${reason.replace(/[\x00-\x1f\x7f]/g, ' ')}]\x1b[0m\r\n`);
    }
    if (rfb) {
      try { rfb.disconnect(); } catch { /* already closed */ }
    }
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000, 'ended');
  };

  const setMode = (m) => {
    mode = m;
    if (modes.includes(m)) select.value = m;
    if (term) term.options.disableStdin = m === 'view';
    if (rfb) rfb.viewOnly = m === 'view';
  };

  const startScreen = () => {
    if (rfb || ended) return;
    rfb = new RFB(stage, `${wsBase}/screen?${new URLSearchParams(auth)}`, { shared: true });
    rfb.viewOnly = mode === 'view';
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.addEventListener('connect', () => note('Screen connected.'));
    rfb.addEventListener('disconnect', (e) => {
      note(e.detail && e.detail.clean ? 'Screen closed.' : 'Screen connection lost.');
      rfb = null;
    });
    rfb.addEventListener('securityfailure', (e) => note(`Screen refused: ${(e.detail && e.detail.reason) || 'security failure'}`));
  };

  ws.addEventListener('message', (ev) => {
    if (typeof ev.data !== 'string') {
      if (term) term.write(new Uint8Array(ev.data));
      return;
    }
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      note('The console sent a message that is not JSON (ignored).');
      return;
    }
    switch (m.type) {
      case 'card': {
        state.textContent = 'active';
        const dev = m.device && typeof m.device === 'object' ? (m.device.name || m.device.id) : m.device;
        const sharer = m.sharer_name || m.sharer;
        card.textContent = [dev, sharer && `shared by ${sharer}`, m.mode && `mode ${m.mode}`, m.transport && `via ${m.transport}`]
          .filter(Boolean).join(' · ');
        if (m.mode) setMode(m.mode);
        if (m.device && typeof m.device === 'object' && m.device.compliance === 'noncompliant') {
          note('This device is not compliant.', 'status warning');
        }
        if (kind === 'screen') startScreen();
        if (term) term.focus();
        break;
      }
      case 'status':
        note(String(m.text ?? ''));
        break;
      case 'chat':
        say(String(m.from || 'device'), String(m.text ?? ''));
        break;
      case 'mode':
        if (m.granted) {
          setMode(String(m.mode));
          note(`Mode ${m.mode}: granted.`);
        } else {
          note(`Mode ${m.mode}: refused${m.reason ? ` (${m.reason})` : ''}.`);
          if (modes.includes(mode)) select.value = mode;
        }
        break;
      case 'end':
        finish(String(m.reason || 'ended'));
        break;
      default:
        break; // newer messages this page does not know
    }
  });
  let opened = false;
  ws.addEventListener('open', () => { opened = true; });
  ws.addEventListener('close', async (ev) => {
    if (ended) return;
    if (opened) {
      finish(ev.reason ? `connection closed (${ev.reason})` : `connection closed (code ${ev.code})`);
      return;
    }
    // The upgrade was refused (the browser does not say why): the audit record may.
    let why = 'could not connect';
    try {
      const s = await api('GET', `/v1/admin/sessions/${encodeURIComponent(id)}`);
      why += ` (session ${s.state}${s.outcome ? `, ${s.outcome}` : ''}${s.error ? `: ${s.error}` : ''})`;
    } catch (e) {
      why += ` (${e.message})`;
    }
    finish(why);
  });
  ws.addEventListener('error', () => note('The session connection failed.'));

  if (term) {
    term.onData((s) => {
      if (ws.readyState === WebSocket.OPEN && !ended) ws.send(enc.encode(s));
    });
    term.onBinary((s) => {
      if (ws.readyState !== WebSocket.OPEN || ended) return;
      const b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i) & 0xff;
      ws.send(b);
    });
    term.onResize(({ rows, cols }) => sendJSON({ type: 'resize', rows, cols }));
    let pending = false;
    window.addEventListener('resize', () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; fit.fit(); });
    });
  }

  chatForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || ended) return;
    if (enc.encode(text).length > MAX_CHAT) {
      note(`A message is at most ${MAX_CHAT} bytes.`);
      return;
    }
    sendJSON({ type: 'chat', text });
    say('you', text);
    input.value = '';
  });
  modeReq.addEventListener('click', () => {
    if (ended) return;
    sendJSON({ type: 'mode', mode: select.value });
    note(`Asked for mode ${select.value}…`);
  });
  end.addEventListener('click', async () => {
    if (ended) return;
    end.disabled = true;
    if (ws.readyState === WebSocket.OPEN) {
      sendJSON({ type: 'end' });
      return; // the bridge answers {"type":"end"} and closes
    }
    try {
      await api('POST', `/v1/admin/sessions/${encodeURIComponent(id)}/end`, {});
      finish('ended by you');
    } catch (e) {
      showError(e);
      end.disabled = false;
    }
  });
}
