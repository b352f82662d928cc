// Calls to the console's /api (the MP's admin API through the console, with the cookie
// session), the current user (/api/me), and the page's error line (#error).

let me = null;

// ApiError is an answer other than 2xx: the HTTP status and the JSON error's code and
// message ({"error": {"code", "message"}} as the MP answers, or {"code", "message"}).
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
  }
}

// loadMe reads /api/me once: {user, display_name, csrf, expires_at, permissions}.
export async function loadMe() {
  if (!me) me = await request('GET', '/api/me');
  return me;
}

// csrf is the token every state-changing request sends (X-CSRF-Token).
export function csrf() {
  return me ? me.csrf : '';
}

// api calls path under /api (path starts with /v1/...). A body is sent as JSON.
export function api(method, path, body) {
  return request(method, '/api' + path, body);
}

async function request(method, url, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', redirect: 'error' };
  if (method !== 'GET' && method !== 'HEAD') {
    headers['X-CSRF-Token'] = csrf();
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the console: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      if (res.ok) throw new ApiError(res.status, 'bad_answer', `${url}: the answer is not JSON`);
    }
  }
  if (!res.ok) {
    const e = (data && (data.error || data)) || {};
    throw new ApiError(res.status, e.code, e.message || `${method} ${url}: HTTP ${res.status}`);
  }
  return data;
}

// showError puts an error on the page's #error line (null hides it).
export function showError(err) {
  const el = document.getElementById('error');
  if (!el) return;
  if (!err) {
    el.hidden = true;
    el.textContent = '';
    return;
  }
  const code = err.code ? ` (${err.code})` : '';
  el.textContent = `${err.message}${code}`;
  el.hidden = false;
}
