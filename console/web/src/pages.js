// The devices, device, sessions and session (audit record) pages.
import { api, showError } from './api.js';
import { h, dl, table, fmtTime, yesNo, dash } from './dom.js';

const enc = encodeURIComponent;

// devicesPage: every device the user may read, with a search that filters as you type.
export async function devicesPage(main) {
  main.append(h('h1', null, 'Devices'));
  const search = h('input', { id: 'device-search', type: 'search', placeholder: 'Search name, id or FQDN',
    'aria-label': 'Search devices', autocomplete: 'off' });
  const count = h('span', { id: 'devices-count', class: 'muted' });
  main.append(h('div', { class: 'toolbar' }, search, count));
  const devices = (await api('GET', '/v1/admin/devices')) || [];
  devices.sort((a, b) => (a.name || '').localeCompare(b.name || '') || a.id.localeCompare(b.id));
  const rows = devices.map((d) => {
    const tr = h('tr', { 'data-device-id': d.id },
      h('td', null, h('a', { href: `/devices/${enc(d.id)}` }, d.name || d.id)),
      h('td', null, onlineBadge(d.connected > 0)),
      h('td', null, dash(d.last_location)),
      h('td', null, complianceBadge(d.compliance)),
      h('td', null, fmtTime(d.last_seen)));
    tr.dataset.search = [d.name, d.id, d.fqdn].filter(Boolean).join('\n').toLowerCase();
    return tr;
  });
  main.append(table('devices', ['Name', 'Online', 'Location', 'Compliance', 'Last check-in'], rows));
  const empty = h('p', { id: 'devices-empty', class: 'muted', hidden: true }, 'No device matches.');
  main.append(empty);
  const filter = () => {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    for (const tr of rows) {
      tr.hidden = q !== '' && !tr.dataset.search.includes(q);
      if (!tr.hidden) shown++;
    }
    count.textContent = `${shown} of ${rows.length}`;
    empty.hidden = shown > 0 || rows.length === 0;
  };
  search.addEventListener('input', filter);
  filter();
  if (rows.length === 0) main.append(h('p', { class: 'muted' }, 'No devices (or none in your scope).'));
  search.focus();
}

function onlineBadge(on) {
  return h('span', { class: on ? 'badge ok' : 'badge off' }, on ? 'online' : 'offline');
}

function complianceBadge(c) {
  const v = c || 'unknown';
  const cls = v === 'compliant' ? 'ok' : v === 'noncompliant' ? 'bad' : 'off';
  return h('span', { class: `badge ${cls}` }, v);
}

// devicePage: facts, certificate, groups, deployments, remote-control start buttons.
export async function devicePage(main, id) {
  const base = `/v1/admin/devices/${enc(id)}`;
  const [d, remote, deployments, groups, messages] = await Promise.all([
    api('GET', base),
    api('GET', `${base}/remote`).catch((e) => ({ error: e })),
    api('GET', `${base}/deployments`).catch((e) => ({ error: e })),
    api('GET', '/v1/admin/groups').catch(() => []),
    api('GET', `${base}/messages?limit=20`).catch(() => null),
  ]);
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '/devices' }, 'Devices'), ' / '),
    h('h1', { id: 'device-name' }, d.name || d.id));

  const left = h('div', { class: 'col' });
  const right = h('div', { class: 'col' });
  main.append(h('div', { class: 'cols' }, left, right));

  left.append(h('section', null, h('h2', null, 'Facts'), dl('device-facts', [
    ['ID', h('code', null, d.id)],
    ['FQDN', dash(d.fqdn)],
    ['OS', dash(d.os)],
    ['Agent version', dash(d.agent_version)],
    ['Addresses', d.addresses && d.addresses.length ? d.addresses.join(', ') : '—'],
    ['Online', onlineBadge(d.connected > 0)],
    ['Location', dash(d.last_location)],
    ['Claimed location', dash(d.claimed_location)],
    ['Compliance', complianceBadge(d.compliance)],
    ['First seen', fmtTime(d.first_seen)],
    ['Last seen', fmtTime(d.last_seen)],
    ['Hardware ID', dash(d.hardware_id)],
    ['Blocked', d.blocked ? `yes, since ${fmtTime(d.blocked_at)}` : 'no'],
  ])));
  if (d.warnings && d.warnings.length) {
    left.append(h('ul', { class: 'warnings' }, d.warnings.map((w) => h('li', null, w))));
  }
  left.append(h('section', null, h('h2', null, 'Certificate'), dl('device-certificate', [
    ['Serial', h('code', null, dash(d.serial))],
    ['Public key SHA-256', h('code', { class: 'wrap' }, dash(d.public_key_hash))],
  ])));
  const byName = new Map((Array.isArray(groups) ? groups : []).map((g) => [g.name, g]));
  const gs = d.groups || [];
  left.append(h('section', null, h('h2', null, 'Groups'), gs.length
    ? h('ul', { id: 'device-groups', class: 'groups' }, gs.map((name) => {
      const g = byName.get(name);
      return h('li', null, name, g && g.policy ? h('span', { class: 'muted' }, ` — policy ${g.policy}, priority ${g.priority}`) : null);
    }))
    : h('p', { id: 'device-groups', class: 'muted' }, 'In no group.')));

  right.append(remoteSection(d, remote));

  const deps = Array.isArray(deployments) ? deployments : [];
  const depSection = h('section', null, h('h2', null, 'Deployments'));
  depSection.append(table('device-deployments', ['Package', 'Version', 'State', 'Error', 'DP', 'Updated'],
    deps.map((x) => h('tr', { 'data-deployment-id': x.id },
      h('td', null, x.package), h('td', null, dash(x.version)), h('td', null, x.state),
      h('td', null, dash(x.error)), h('td', null, dash(x.dp)), h('td', null, fmtTime(x.updated_at))))));
  if (deployments && deployments.error) {
    depSection.append(h('p', { class: 'muted' }, `Deployments unavailable: ${deployments.error.message}`));
  } else if (deps.length === 0) {
    depSection.append(h('p', { class: 'muted' }, 'No deployments.'));
  }
  right.append(depSection);

  if (messages && Array.isArray(messages.messages) && messages.messages.length) {
    right.append(h('section', null, h('h2', null, 'Recent status messages'),
      table('device-messages', ['Time', 'Severity', 'Component', 'Text'],
        messages.messages.slice().reverse().map((m) => h('tr', { class: `sev-${m.severity}` },
          h('td', null, fmtTime(m.time)), h('td', null, m.severity), h('td', null, m.component), h('td', null, m.text))))));
  }
}

const kindLabels = { terminal: 'Terminal', screen: 'Screen' };
const modeLabels = { view: 'view', control: 'control', elevated: 'elevated', unattended: 'unattended' };

function remoteSection(d, remote) {
  const sec = h('section', { id: 'device-remote' }, h('h2', null, 'Remote control'));
  if (remote.error) {
    sec.append(h('p', { id: 'no-remote', class: 'muted' }, `Remote control unavailable: ${remote.error.message}`));
    return sec;
  }
  const warning = remote.compliance_warning || (d.compliance === 'noncompliant' ? 'This device is not compliant.' : '');
  const warnEl = h('p', { id: 'compliance-warning', class: 'warning', hidden: !warning, role: 'note' }, warning);
  sec.append(warnEl);
  const modes = remote.modes || [];
  const kinds = remote.kinds && remote.kinds.length ? remote.kinds : ['terminal'];
  if (modes.length === 0) {
    sec.append(h('p', { id: 'no-remote', class: 'muted' },
      'You may not start a session on this device: your role gives no remote-control permission over it, or its policy turns remote control off.'));
    return sec;
  }
  if (!remote.online) {
    sec.append(h('p', { id: 'no-remote', class: 'muted' },
      'The device is offline: a session can start once its agent is connected.'));
    return sec;
  }
  for (const kind of kinds) {
    // a screen session has no elevated mode (the MP refuses it)
    const ms = modes.filter((m) => !(kind === 'screen' && m === 'elevated'));
    if (ms.length === 0) continue;
    sec.append(h('div', { class: 'start-row' }, h('span', { class: 'kind' }, kindLabels[kind] || kind),
      ms.map((mode) => h('button', {
        type: 'button', class: 'start', 'data-start-kind': kind, 'data-start-mode': mode,
        onclick: (ev) => start(ev.currentTarget, d, kind, mode, warning),
      }, modeLabels[mode] || mode))));
  }
  sec.append(h('p', { class: 'muted small' },
    'The device\'s user is asked to consent (unless the mode is unattended). Console sessions end at the management point: they are audited as not end-to-end.'));
  return sec;
}

async function start(button, d, kind, mode, warning) {
  if (warning && !confirm(`${warning}\n\nConnect to ${d.name || d.id} anyway?`)) return;
  showError(null);
  const buttons = document.querySelectorAll('button[data-start-kind]');
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const s = await api('POST', '/v1/admin/sessions', { device: d.id, mode, kind: kind === 'screen' ? 'screen' : '' });
    const q = new URLSearchParams({ ticket: s.ticket_id, kind, mode: s.session.mode || mode });
    location.assign(`/sessions/${enc(s.session.id)}/live?${q}`);
  } catch (e) {
    showError(e);
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// sessionsPage: the active count and the history (the Remote Help report), with CSV.
export async function sessionsPage(main) {
  main.append(h('h1', null, 'Sessions'));
  const sessions = (await api('GET', '/v1/admin/sessions')) || [];
  const active = sessions.filter((s) => s.state !== 'ended').length;
  main.append(h('div', { class: 'toolbar' },
    h('span', null, 'Active: ', h('strong', { id: 'sessions-active-count' }, String(active))),
    h('a', { id: 'sessions-csv', class: 'button', href: '/api/v1/admin/sessions?format=csv', download: 'sessions.csv' }, 'Export CSV')));
  const rows = sessions.map((s) => h('tr', { 'data-session-id': s.id, 'data-state': s.state },
    h('td', null, h('a', { href: `/sessions/${enc(s.id)}` }, s.id.slice(0, 8))),
    h('td', null, person(s.helper, s.helper_name)),
    h('td', null, person(s.sharer, s.sharer_name)),
    h('td', null, s.device_name || s.device),
    h('td', null, s.kind === 'screen' ? 'screen' : 'terminal'),
    h('td', null, fmtTime(s.started_at || s.requested_at)),
    h('td', null, s.state === 'ended' ? fmtTime(s.ended_at) : s.state),
    h('td', null, modesText(s)),
    h('td', null, dash(s.outcome)),
    h('td', null, dash(s.transport)),
    h('td', null, yesNo(s.e2e)),
    h('td', null, yesNo(s.console))));
  main.append(table('sessions', ['Session', 'Helper', 'Sharer', 'Device', 'Kind', 'Start', 'End', 'Modes', 'Outcome', 'Transport', 'E2E', 'Console'], rows));
  if (rows.length === 0) main.append(h('p', { class: 'muted' }, 'No sessions yet.'));
}

function person(id, name) {
  if (!id) return '—';
  return name && name !== id ? `${name} (${id})` : id;
}

function modesText(s) {
  const ms = (s.modes || []).map((m) => m.mode);
  return ms.length ? ms.join(' → ') : dash(s.mode);
}

// sessionPage: one session's audit record.
export async function sessionPage(main, id) {
  const s = await api('GET', `/v1/admin/sessions/${enc(id)}`);
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '/sessions' }, 'Sessions'), ' / '),
    h('h1', { id: 'session-title' }, `Session ${s.id}`));
  main.append(dl('session-record', [
    ['Device', h('a', { href: `/devices/${enc(s.device)}` }, s.device_name || s.device)],
    ['Helper', person(s.helper, s.helper_name)],
    ['Sharer', person(s.sharer, s.sharer_name)],
    ['Viewers', s.viewers && s.viewers.length ? s.viewers.join(', ') : '—'],
    ['Reason', dash(s.reason)],
    ['State', s.state],
    ['Outcome', dash(s.outcome)],
    ['Error', dash(s.error)],
    ['Kind', s.kind === 'screen' ? 'screen' : 'terminal'],
    ['Mode', dash(s.mode)],
    ['Transport', dash(s.transport)],
    ['Direct connection', dash(s.direct_error && `lost: ${s.direct_error}`)],
    ['End-to-end', yesNo(s.e2e)],
    ['Web console', yesNo(s.console)],
    ['Device location', dash(s.location)],
    ['Management point', dash(s.mp)],
    ['Requested', fmtTime(s.requested_at)],
    ['Started', fmtTime(s.started_at)],
    ['Ended', fmtTime(s.ended_at)],
    ['Bytes to device', String(s.bytes_to_device ?? 0)],
    ['Bytes from device', String(s.bytes_from_device ?? 0)],
    ['Recorded', yesNo(s.recorded)],
  ]));
  const modes = s.modes || [];
  if (modes.length) {
    main.append(h('h2', null, 'Modes'), table('session-modes', ['Mode', 'From'],
      modes.map((m) => h('tr', null, h('td', null, m.mode), h('td', null, fmtTime(m.at))))));
  }
}
