// The ibcm web console: one page shell (index.html) for every route; this module reads
// location.pathname and renders the page into #main. Plain DOM, no framework.
import './app.css';
import '@xterm/xterm/css/xterm.css';
import { loadMe, csrf, showError, ApiError } from './api.js';
import { h, clear } from './dom.js';
import { devicesPage, devicePage, sessionsPage, sessionPage } from './pages.js';
import { livePage } from './live.js';

const routes = [
  [/^\/$/, () => { history.replaceState(null, '', '/devices'); return devicesPage; }],
  [/^\/devices\/?$/, () => devicesPage],
  [/^\/devices\/([^/]+)$/, () => devicePage],
  [/^\/sessions\/?$/, () => sessionsPage],
  [/^\/sessions\/([^/]+)\/live$/, () => livePage],
  [/^\/sessions\/([^/]+)$/, () => sessionPage],
];

async function main() {
  const main = document.getElementById('main');
  let me;
  try {
    me = await loadMe();
  } catch (e) {
    return failed(main, e);
  }
  document.getElementById('user').textContent = me.user;
  document.getElementById('user-display-name').textContent = me.display_name && me.display_name !== me.user ? me.display_name : '';
  document.getElementById('logout-csrf').value = csrf();
  document.getElementById('logout').addEventListener('submit', logout);

  const path = location.pathname;
  for (const [re, pick] of routes) {
    const m = path.match(re);
    if (!m) continue;
    const page = pick();
    const nav = page === sessionsPage || page === sessionPage || page === livePage ? 'nav-sessions' : 'nav-devices';
    document.getElementById(nav).classList.add('current');
    clear(main);
    try {
      await page(main, m[1] === undefined ? undefined : decodeURIComponent(m[1]), me);
    } catch (e) {
      failed(main, e);
    }
    return;
  }
  clear(main).append(h('h1', null, 'Not found'), h('p', null, 'No console page has this address.'));
}

// failed shows an error; a lost login gets the #login-needed explanation.
function failed(main, e) {
  if (!(e instanceof ApiError)) console.error(e);
  showError(e);
  if (e instanceof ApiError && e.status === 401) {
    clear(main).append(h('section', { id: 'login-needed', class: 'notice' },
      h('h1', null, 'Login needed'),
      h('p', null, 'Your console session has ended. Run ', h('code', null, 'ibcm console login'),
        ' on your machine and open the one-time link it prints.')));
  } else if (main.textContent.trim() === 'Loading…') {
    clear(main);
  }
}

// logout posts /logout with the CSRF token (header and form field), then shows /logged-out.
async function logout(ev) {
  ev.preventDefault();
  const body = new URLSearchParams({ csrf: csrf() });
  try {
    const res = await fetch('/logout', {
      method: 'POST', credentials: 'same-origin', redirect: 'manual', body,
      headers: { 'X-CSRF-Token': csrf() },
    });
    // 401: the cookie session had ended already, which is what logging out wants
    if (res.type !== 'opaqueredirect' && !res.ok && res.status !== 401) {
      let msg = `log out: HTTP ${res.status}`;
      try { const j = await res.json(); msg = (j.error || j).message || msg; } catch { /* not JSON */ }
      throw new ApiError(res.status, 'logout', msg);
    }
  } catch (e) {
    showError(e instanceof ApiError ? e : new ApiError(0, 'network', e.message));
    return;
  }
  location.assign('/logged-out');
}

main();
